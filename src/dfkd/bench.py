"""``dfkd bench``: methods x seeds on one teacher/student pair at one budget.

A bench config holds the shared budget (``base``: teacher, student, epochs,
rounds, batch_size, ...), optional per-method recipes (``recipes: {method: file}``)
and the reference trainings (``references: {epochs: N}``). The base always wins
over a recipe, so every method gets the same teacher, student, budget and seeds.
Runs live in ``DIR/<method>/seed<k>``; finished runs are skipped and interrupted
ones resumed, so an interrupted bench loses nothing.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

from dfkd.api import build_trainer
from dfkd.checkpoint import load_model_checkpoint
from dfkd.config import merge, parse_overrides, read_yaml
from dfkd.data import dataset_info, load_split
from dfkd.engine import CHECKPOINT, SUMMARY
from dfkd.errors import ConfigError
from dfkd.methods import get_method
from dfkd.metrics import fidelity_metrics, predict
from dfkd.report import format_table
from dfkd.teacher import SupervisedSettings, normalizer, train_supervised

REFERENCES = ("scratch", "kd_with_data")
COLUMNS = ["final_acc1", "final_agreement", "final_loyalty", "acc1_mean", "acc1_var",
           "epochs_to_90pct", "seconds_to_90pct", "synthesis_seconds", "student_seconds",
           "peak_memory_mb"]


def plan(config: dict[str, Any], methods: list[str], seeds: list[int], out: Path
         ) -> list[dict[str, Any]]:
    """Every (method, seed) run with its folder and state: done, resume or new."""
    for name in methods:
        if name not in REFERENCES:
            get_method(name)  # unknown names fail before any work
    runs = []
    for name in methods:
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            if name in REFERENCES:
                state = "done" if (folder / "result.json").exists() else "new"
            elif (folder / SUMMARY).exists():
                state = "done"
            else:
                state = "resume" if (folder / CHECKPOINT).exists() else "new"
            runs.append({"method": name, "seed": seed, "folder": folder, "state": state})
    return runs


def _method_config(config: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    recipe = (config.get("recipes") or {}).get(method)
    raw = read_yaml(recipe) if recipe else {}
    return merge(merge(raw, {"method": method}), {**config.get("base", {}), "seed": seed})


def _reference(config: dict[str, Any], kind: str, seed: int, folder: Path,
               progress: bool) -> dict[str, Any]:
    base = config.get("base", {})
    teacher_path = base["teacher"]
    teacher, meta = load_model_checkpoint(teacher_path)
    info = dataset_info(meta["dataset"])
    settings = SupervisedSettings(
        dataset=info.name, model=base.get("student", "lenet5_half"), seed=seed,
        epochs=int((config.get("references") or {}).get("epochs", 10)),
        device=base.get("device", "auto"), data_root=base.get("data_root"),
        kd_from=teacher_path if kind == "kd_with_data" else None)
    student, smeta = train_supervised(settings, folder / "student.pt", progress=progress)
    split = base.get("eval_split", "test")
    images, labels = load_split(info.name, split, settings.data_root)
    device = next(student.parameters()).device
    norm = normalizer(info.mean, info.std, device)
    s_logits = predict(student, images, 1024, norm, device)
    t_logits = predict(teacher.to(device), images, 1024, norm, device)
    m = fidelity_metrics(s_logits, t_logits, labels)
    result = {"final_acc1": m["acc1"], "final_agreement": m["agreement"],
              "final_loyalty": m["loyalty"], "student_seconds": smeta["train_seconds"],
              "teacher_acc1": meta.get(f"{split}_acc1"), "eval_split": split}
    (folder / "result.json").write_text(json.dumps(result, indent=2))
    return result


def run_bench(config_path: str, methods: list[str], seeds: list[int], out: str | Path,
              dry_run: bool = False, report_only: bool = False, teacher: str | None = None,
              overrides: list[str] = (), progress: bool | None = None) -> list[dict[str, Any]]:
    """``teacher`` and ``overrides`` ("key=value") replace keys of the config's base."""
    config = read_yaml(config_path)
    base = merge(config.get("base") or {}, parse_overrides(list(overrides)))
    config["base"] = {**base, "teacher": teacher} if teacher is not None else base
    if "teacher" not in config.get("base", {}):
        raise ConfigError(f"{config_path}: 'base.teacher' (the teacher checkpoint) is required")
    out = Path(out)
    runs = plan(config, methods, seeds, out)
    if dry_run:
        return runs
    out.mkdir(parents=True, exist_ok=True)
    for run in runs:
        if run["state"] == "done" or report_only:
            continue
        print(f"bench: {run['method']} seed {run['seed']} ({run['state']})", flush=True)
        run["folder"].mkdir(parents=True, exist_ok=True)
        if run["method"] in REFERENCES:
            _reference(config, run["method"], run["seed"], run["folder"], progress is not False)
            continue
        raw = _method_config(config, run["method"], run["seed"])
        resume = run["state"] == "resume"
        trainer = build_trainer(raw, run["folder"], resume=resume, overwrite=not resume,
                                progress=progress)
        trainer.fit()
    rows = collect(out, methods, seeds)
    write_results(out, rows)
    return runs


def _load_result(folder: Path) -> dict[str, Any] | None:
    for name in (SUMMARY, "result.json"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    return None


def collect(out: Path, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per method: mean and std over seeds of every column."""
    rows = []
    for name in methods:
        results = [r for s in seeds if (r := _load_result(out / name / f"seed{s}"))]
        row: dict[str, Any] = {"method": name, "seeds": len(results)}
        for col in COLUMNS:
            values = [r[col] for r in results if r.get(col) is not None]
            row[col] = statistics.fmean(values) if values else None
            row[col + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0 \
                if values else None
        rows.append(row)
    return rows


def write_results(out: Path, rows: list[dict[str, Any]]) -> None:
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(row: dict[str, Any], col: str) -> str:
        value = row[col]
        if value is None:
            return "-"
        digits = 3 if "loyalty" in col else 2
        return f"{value:.{digits}f} ± {row[col + '_std']:.{digits}f}"

    table = format_table(["method", "seeds", *COLUMNS],
                         [[r["method"], r["seeds"], *(cell(r, c) for c in COLUMNS)]
                          for r in rows])
    (out / "results.md").write_text(table + "\n")
    plot_curves(out, [r["method"] for r in rows])


def plot_curves(out: Path, methods: list[str]) -> bool:
    """Test accuracy against epoch and wall time for every method (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: matplotlib is not installed, so no curves.png "
              "(pip install 'dfkd[plot]')")
        return False
    fig, (ax_epoch, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name in methods:
        for folder in sorted((out / name).glob("seed*")):
            metrics = folder / "metrics.jsonl"
            if not metrics.exists():
                continue
            rows = [json.loads(line) for line in metrics.read_text().splitlines()]
            label = f"{name} {folder.name}"
            ax_epoch.plot([r["epoch"] for r in rows], [r["acc1"] for r in rows], label=label)
            ax_time.plot([r["elapsed_seconds"] for r in rows], [r["acc1"] for r in rows],
                         label=label)
    ax_epoch.set(xlabel="epoch", ylabel="test Acc@1 (%)")
    ax_time.set(xlabel="training wall time (s)", ylabel="test Acc@1 (%)")
    ax_epoch.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=120)
    plt.close(fig)
    return True
