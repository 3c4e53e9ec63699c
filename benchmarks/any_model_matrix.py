"""Any model a user brings: teachers x students x methods, with defaults only.

Fashion-MNIST at 32x32 (dfkd's ``fashion_mnist``), the val split only (the test split is
not read). Each teacher is trained here with ``dfkd train-teacher`` (its val Acc@1 is
measured with ``dfkd evaluate --split val``); then every (teacher, student, method) cell
runs

    dfkd distill --teacher T.pt --student S --method M --eval-split val --seed 0 \
        --epochs 1+W --set rounds=R --set synthetic_probe=0 --set sample_grid=0

with no other setting: the recipe is the one dfkd picks for the images and the method.
The budget is equal in student steps: R = ceil(STEPS / kd_steps of the method's recipe)
rounds, after the method's W warm-up epochs (Fast's generator warm-up; 0 elsewhere). A
cell *runs* when it exits 0, or exits 2 with one line that says why the method cannot use
that teacher (a user error, no traceback); it *learns* when its val Acc@1 is at least
``--margin`` points above chance.

Each cell writes ``OUT/cells/T__S__M.json``; existing cells are kept, so the same command
continues an interrupted matrix. ``--only-teachers`` limits the teachers (e.g. to run the
costly zoo ResNet last). Writes ``OUT/matrix.json`` and prints the markdown tables.

    OMP_NUM_THREADS=1 python benchmarks/any_model_matrix.py --out runs/matrix --jobs 2

``--default-runs 0,1`` runs, instead, each teacher's default distillation (``dfkd distill
--teacher T.pt --eval-split val --seed S``: the default student and method, the full recipe),
and reads its final student's test Acc@1 once at the end (``OUT/default/``). ``--device cuda``
runs every dfkd call (teachers, cells, default runs) on the GPU.

timm teachers need timm (``pip install 'dfkd[timm]'``) and a torchvision that imports
beside the installed torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dfkd.methods.catalog import documented

HERE = Path(__file__).resolve().parent
MODELS = HERE / "own_pair_models.py"
DEVICE = "cpu"   # --device: every dfkd call runs there

# name -> (model spec, teacher epochs)
TEACHERS = {
    "zoo_wrn16_2": ("wrn16_2", 2),
    "timm_resnet18": ("timm:resnet18", 2),
    "timm_mobilenetv3": ("timm:mobilenetv3_small_100", 1),
    "timm_convnext_atto": ("timm:convnext_atto", 1),
    "groupnorm_cnn": (f"{MODELS}:make_groupnorm_teacher", 1),
    "zoo_resnet18": ("resnet18", 1),
}
STUDENTS = {
    "lenet5_half": "lenet5_half",                          # BatchNorm, 16K parameters
    "zoo_wrn16_1": "wrn16_1",                              # BatchNorm, 175K
    "plain_cnn": f"{MODELS}:make_plain_student",           # no normalisation layer, 20K
}
METHODS = [cls.name for cls in documented()]   # every registered method, in the docs' order


def dfkd(*args: str, timeout: float | None = 3600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-m", "dfkd", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def dfkd_ok(what: str, *args: str, timeout: float | None = 3600) -> str:
    """``dfkd *args`` that must succeed: its stdout, or the benchmark stops naming ``what``."""
    run = dfkd(*args, timeout=timeout)
    if run.returncode != 0:
        raise SystemExit(f"{what} failed:\n{run.stderr[-2000:]}")
    return run.stdout


def split_acc1(what: str, model: Path, split: str) -> float:
    return json.loads(dfkd_ok(what, "evaluate", str(model), "--split", split, "--json",
                              "--device", DEVICE))["acc1"]


def fmnist_recipe(method: str) -> dict:
    """The recipe dfkd starts ``method`` from for 32 px grey images, as written."""
    from dfkd.config import read_yaml
    from dfkd.recipes import resolve_named

    return read_yaml(resolve_named(f"fashion_mnist/{method}_lenet5"))


def recipe_steps(method: str) -> tuple[int, int]:
    """(kd_steps, warm-up epochs) of the recipe dfkd starts ``method`` from here."""
    raw = fmnist_recipe(method)
    return int(raw["kd_steps"]), int(raw.get(method, {}).get("warmup", 0) or 0)


def train_teacher(out: Path, name: str) -> dict:
    spec, epochs = TEACHERS[name]
    path = out / "teachers" / f"{name}.pt"
    info = out / "teachers" / f"{name}.json"
    if info.exists():
        return json.loads(info.read_text())
    path.parent.mkdir(parents=True, exist_ok=True)
    start, seconds = time.time(), None
    if not path.exists():   # (the checkpoint is written whole, at the end)
        dfkd_ok(f"teacher {name}", "train-teacher", "--model", spec, "--epochs", str(epochs),
                "--out", str(path), "--device", DEVICE, "--no-progress")
        seconds = round(time.time() - start, 1)
    result = {"teacher": name, "spec": spec, "epochs": epochs,
              "val_acc1": split_acc1(f"evaluating teacher {name}", path, "val"),
              "train_seconds": seconds}
    info.write_text(json.dumps(result, indent=1))
    return result


def run_cell(out: Path, teacher: str, student: str, method: str, steps: int) -> dict:
    cell = out / "cells" / f"{teacher}__{student}__{method}.json"
    if cell.exists():
        return json.loads(cell.read_text())
    kd_steps, warmup = recipe_steps(method)
    rounds = math.ceil(steps / kd_steps)
    run_dir = out / "runs" / teacher / student / method
    start = time.time()
    run = dfkd("distill", "--teacher", str(out / "teachers" / f"{teacher}.pt"),
               "--student", STUDENTS[student], "--method", method, "--eval-split", "val",
               "--seed", "0", "--epochs", str(1 + warmup), "--set", f"rounds={rounds}",
               "--set", "synthetic_probe=0", "--set", "sample_grid=0", "--no-progress",
               "--device", DEVICE, "--out", str(run_dir), "--overwrite")
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    result = {"teacher": teacher, "student": student, "method": method,
              "rounds": rounds, "epochs": 1 + warmup, "student_steps": rounds * kd_steps,
              "exit": run.returncode, "seconds": round(time.time() - start, 1),
              "traceback": "Traceback" in run.stderr,
              "said": [line for line in lines if line.startswith("dfkd:")][-3:]}
    summary = run_dir / "summary.json"
    if run.returncode == 0 and summary.exists():
        result["val_acc1"] = json.loads(summary.read_text())["final_acc1"]
    elif run.returncode != 0:
        result["error"] = lines[-1] if lines else ""
    cell.parent.mkdir(parents=True, exist_ok=True)
    cell.write_text(json.dumps(result, indent=1))
    print(f"{teacher:>20} {student:>12} {method:>8}: exit {run.returncode} "
          f"{result.get('val_acc1', result.get('error', ''))} ({result['seconds']} s)",
          flush=True)
    return result


def default_run(out: Path, teacher: str, seed: int) -> dict:
    """The teacher's default run: ``dfkd distill --teacher T.pt --eval-split val --seed S``
    and nothing else (the default student and method, the full recipe), then its final
    student's test Acc@1, read once. An interrupted run is resumed."""
    result_path = out / "default" / f"{teacher}__seed{seed}.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run_dir = out / "default" / teacher / f"seed{seed}"
    start = time.time()
    what = f"default run {teacher} seed {seed}"
    if (run_dir / "checkpoint.pt").exists():
        dfkd_ok(what, "distill", "--resume", str(run_dir), "--no-progress", timeout=None)
    else:
        dfkd_ok(what, "distill", "--teacher", str(out / "teachers" / f"{teacher}.pt"),
                "--eval-split", "val", "--seed", str(seed), "--device", DEVICE,
                "--no-progress", "--out", str(run_dir), timeout=None)
    summary = json.loads((run_dir / "summary.json").read_text())
    result = {"teacher": teacher, "seed": seed, "method": summary["method"],
              "epochs": summary["epochs"], "val_acc1": summary["final_acc1"],
              "test_acc1": split_acc1(f"testing {what}", run_dir, "test"),
              "seconds": round(time.time() - start, 1)}   # this call's: a resumed part only
    result_path.write_text(json.dumps(result, indent=1))
    return result


def render_defaults(out: Path) -> str:
    rows = [json.loads(p.read_text()) for p in sorted((out / "default").glob("*.json"))]
    lines = ["| teacher (val Acc@1) | method → student | val Acc@1 by seed (mean) | "
             "test Acc@1 by seed (mean) | hours by seed |", "|---|---|---|---|---|"]

    def by_seed(mine: list[dict], key: str) -> str:
        values = [r[key] for r in mine]
        return ", ".join(f"{v:.2f}" for v in values) + f" ({sum(values) / len(values):.2f})"

    for t in TEACHERS:
        mine = [r for r in rows if r["teacher"] == t]
        if mine:
            summaries = [json.loads((out / "default" / t / f"seed{r['seed']}" /
                                     "summary.json").read_text()) for r in mine]
            first = summaries[0]
            # hours by each run's own training clock, which a resume carries on (a record's
            # "seconds" is the wall time of the call that finished the run only)
            lines.append(f"| {t} ({first['teacher_acc1']:.1f}) | {mine[0]['method']} → "
                         f"{first['config']['student']} | {by_seed(mine, 'val_acc1')} | "
                         f"{by_seed(mine, 'test_acc1')} | "
                         + ", ".join(f"{x['elapsed_seconds'] / 3600:.2f}" for x in summaries)
                         + " |")
    return "\n".join(lines)


def verdict(cell: dict, margin: float) -> str:
    if cell["traceback"]:
        return "TRACEBACK"
    if cell["exit"] == 2:   # a user error: one line, no traceback
        said = cell.get("error", "")
        return ("needs BN" if "no BatchNorm layer" in said
                else "diverged" if "diverged" in said else "one line")
    if cell["exit"] != 0:
        return f"exit {cell['exit']}"
    acc = cell["val_acc1"]
    return f"{acc:.1f}" + ("" if acc >= 10.0 + margin else " (chance)")


def render(out: Path, teachers: list[str], margin: float) -> str:
    infos = {t: json.loads((out / "teachers" / f"{t}.json").read_text()) for t in teachers
             if (out / "teachers" / f"{t}.json").exists()}
    lines = ["| teacher (val Acc@1) | student | " + " | ".join(METHODS) + " |",
             "|---|---|" + "---|" * len(METHODS)]
    cells = []
    for t in teachers:
        for s in STUDENTS:
            row = []
            for m in METHODS:
                path = out / "cells" / f"{t}__{s}__{m}.json"
                if path.exists():
                    cell = json.loads(path.read_text())
                    cells.append(cell)
                    row.append(verdict(cell, margin))
                else:
                    row.append("not run")
            head = f"{t} ({infos[t]['val_acc1']:.1f})" if t in infos else t
            lines.append(f"| {head} | {s} | " + " | ".join(row) + " |")
    ran = [c for c in cells if not c["traceback"] and c["exit"] in (0, 2)]
    learned = [c for c in cells if c["exit"] == 0 and c["val_acc1"] >= 10.0 + margin]
    refused: dict[str, str] = {}   # one example line of each kind
    for c in cells:
        if c["exit"] == 2:
            refused.setdefault(verdict(c, margin), c.get("error", ""))
    lines += ["", f"{len(cells)} cells: {len(ran)} run or refuse in one line, "
              f"{sum(c['traceback'] for c in cells)} tracebacks; {len(learned)} of "
              f"{sum(c['exit'] == 0 for c in cells)} runs end >= {10 + margin:g}% val Acc@1."]
    if refused:
        lines += ["", "What a run that stops says (one example of each kind):"]
        lines += [f"- {kind}: `{line}`" for kind, line in sorted(refused.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/matrix"))
    ap.add_argument("--jobs", type=int, default=2, help="cells at once (one per core)")
    ap.add_argument("--steps", type=int, default=100, help="student steps per cell")
    ap.add_argument("--margin", type=float, default=5.0,
                    help="points above chance (10%%) that count as learning")
    ap.add_argument("--only-teachers", nargs="*", default=None, choices=list(TEACHERS))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="where every dfkd call runs (cpu, cuda)")
    ap.add_argument("--default-runs", default=None, metavar="SEEDS",
                    help="instead of the matrix: each teacher's default run at its full "
                         "budget for these seeds (e.g. 0,1), val and then test Acc@1")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    teachers = args.only_teachers or list(TEACHERS)
    if not args.render_only:
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda t: train_teacher(args.out, t), teachers))
            if args.default_runs is not None:
                seeds = [int(s) for s in args.default_runs.split(",")]
                list(pool.map(lambda c: default_run(args.out, *c),
                              [(t, s) for t in teachers for s in seeds]))
            else:
                # student by student: every teacher gets its first student before its last
                jobs = [(t, s, m) for s in STUDENTS for t in teachers for m in METHODS]
                list(pool.map(lambda c: run_cell(args.out, *c, args.steps), jobs))
    if args.default_runs is not None:
        print(render_defaults(args.out))
        return
    table = render(args.out, list(TEACHERS), args.margin)
    torch = __import__("torch")
    meta = {"machine": f"{platform.processor() or platform.machine()}, "
                       f"{os.cpu_count()} cores", "torch": torch.__version__,
            "device": (torch.cuda.get_device_name() if DEVICE.startswith("cuda") else "cpu"),
            "steps": args.steps, "margin": args.margin}
    record = args.out / "matrix.json"
    if args.render_only and record.exists():  # the cells ran elsewhere: keep their machine
        ran = json.loads(record.read_text())["meta"]
        meta = {**meta, **{k: ran[k] for k in ("machine", "torch", "device") if k in ran}}
    record.write_text(json.dumps(
        {"meta": meta, "table": table}, indent=1))
    print(table)


if __name__ == "__main__":
    main()
