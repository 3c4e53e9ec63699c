"""A student without normalisation layers: the recipe's student learning rate or a tenth of it?

The Fashion-MNIST recipes were tuned for LeNet-5-half (BatchNorm); a student with no
normalisation layer at their rate may diverge (zskt's 0.35 does with every teacher in the
any-model matrix). This measures, on the val split only, each method's recipe rate against
the rate dfkd's divergence line suggests (``dfkd.health.lower_lr``: a tenth), for the
methods whose recipe rate is highest, with the LeNet-5 teacher and the plain CNN student of
``benchmarks/own_pair_models.py``:

    dfkd distill --teacher T.pt --student own_pair_models.py:make_plain_student --method M \
        --eval-split val --seed S --epochs E --set student_optim.lr=LR \
        --set synthetic_probe=0 --set sample_grid=0

A run that diverges stops in one line (exit 2) and counts as chance (10%). Each run writes
``OUT/M__lrX__seedS.json``; existing ones are kept, so the same command continues.

    OMP_NUM_THREADS=1 python benchmarks/plain_student_lr.py --teacher results/tables/teacher.pt \
        --out runs/plain_lr --epochs 3 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from any_model_matrix import MODELS, dfkd, fmnist_recipe  # noqa: E402

STUDENT = f"{MODELS}:make_plain_student"


def run(out: Path, teacher: Path, method: str, lr: float, seed: int, epochs: int,
        device: str) -> dict:
    record = out / f"{method}__lr{lr:g}__seed{seed}.json"
    if record.exists():
        return json.loads(record.read_text())
    run_dir = out / "runs" / record.stem
    start = time.time()
    proc = dfkd("distill", "--teacher", str(teacher), "--student", STUDENT, "--method", method,
                "--eval-split", "val", "--seed", str(seed), "--epochs", str(epochs),
                "--set", f"student_optim.lr={lr}", "--set", "synthetic_probe=0",
                "--set", "sample_grid=0", "--no-progress", "--device", device,
                "--out", str(run_dir), "--overwrite", timeout=None)
    # exit 2 is a user error in one line: here, only the divergence stop counts as a result
    diverged = proc.returncode == 2 and "diverged" in proc.stderr
    if (proc.returncode != 0 and not diverged) or "Traceback" in proc.stderr:
        raise SystemExit(f"{record.stem} failed:\n{proc.stderr[-2000:]}")
    result = {"method": method, "lr": lr, "seed": seed, "epochs": epochs,
              "diverged": diverged, "seconds": round(time.time() - start, 1),
              "val_acc1": 10.0 if diverged else
              json.loads((run_dir / "summary.json").read_text())["final_acc1"]}
    if diverged:
        result["said"] = proc.stderr.strip().splitlines()[-1]
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(result, indent=1))
    print(f"{method:>7} lr {lr:<8g} seed {seed}: {result['val_acc1']:.2f}"
          + (" (diverged)" if diverged else ""), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", type=Path, default=Path("results/tables/teacher.pt"))
    ap.add_argument("--out", type=Path, default=Path("runs/plain_lr"))
    ap.add_argument("--methods", nargs="+", default=["zskt", "fast", "cudfkd"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="where every dfkd call runs (cpu, cuda)")
    args = ap.parse_args()
    from dfkd.health import lower_lr

    lines = ["| method | student lr | val Acc@1 by seed | mean |", "|---|---|---|---|"]
    for method in args.methods:
        rate = float(fmnist_recipe(method)["student_optim"]["lr"])
        for lr in (rate, lower_lr(rate)):
            rows = [run(args.out, args.teacher.resolve(), method, lr, s, args.epochs, args.device)
                    for s in args.seeds]
            accs = [r["val_acc1"] for r in rows]
            lines.append(f"| {method} | {lr:.3g} | "
                         + ", ".join(f"{a:.2f}" + (" (diverged)" if r["diverged"] else "")
                                     for a, r in zip(accs, rows))
                         + f" | {statistics.mean(accs):.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
