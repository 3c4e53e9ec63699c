"""Tune every Fashion-MNIST recipe with one budget (issue #11): same trials, same trial size.

Runs ``dfkd tune`` for each method's recipe in configs/fashion_mnist/ with the same
``--trials`` and the same ``--set`` (the per-trial budget), a pool of ``--jobs`` studies
at once with cores/jobs threads each. A study that was interrupted continues where it
was (dfkd tune's SQLite storage in OUT/METHOD). Then it prints one table: trial 0 (the
recipe as written) against the best trial, on the val split, and the data-free signal's
Spearman rho with val Acc@1 over each study's completed trials (dfkd tune's signal.json).

    python benchmarks/tune_fmnist.py --teacher runs/tables/teacher.pt \\
        --out runs/tune_fmnist10 --trials 8 --set epochs=10 --jobs 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Costliest first (seconds per epoch on one CPU thread), so the pool ends together.
METHODS = ["cmi", "dafl", "cudfkd", "deepinv", "fast", "dfad", "zskt", "dfq"]


def tune_one(method: str, args: argparse.Namespace, threads: int) -> None:
    out = Path(args.out) / method
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    sets = [a for s in args.set for a in ("--set", s)]
    cmd = [sys.executable, "-m", "dfkd", "tune", "--config",
           f"configs/fashion_mnist/{method}_lenet5.yaml", "--teacher", args.teacher,
           "--trials", str(args.trials), "--out", str(out), "--no-progress", *sets]
    with open(Path(args.out) / f"{method}.log", "a") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)


def row(method: str, out: Path) -> str:
    with open(out / method / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    done = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    first = next(t for t in trials if t["number"] == "0")
    best = max(done, key=lambda t: float(t["val_acc1"]))
    signal = json.loads((out / method / "signal.json").read_text())
    rho = [signal[k]["spearman"] for k in ("synthetic_agreement", "synthetic_loyalty")]
    rho = " / ".join("-" if r is None else f"{r:+.2f}" for r in rho)
    return (f"| {method} | {len(done)} + {pruned} | {float(first['val_acc1']):.2f} | "
            f"{float(best['val_acc1']):.2f} (trial {best['number']}) | {rho} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--out", default="runs/tune_fmnist")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the per-trial budget, the same for every method (e.g. epochs=3)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=0,
                   help="threads per study (default: cores / jobs)")
    args = p.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda m: tune_one(m, args, threads), methods))
    print(f"{args.trials} trials per method, per-trial overrides {args.set or 'none'}, "
          f"{args.jobs} studies x {threads} threads; val Acc@1 of the final epoch\n")
    print("| method | trials completed + pruned | trial 0 (the recipe) | best | "
          "Spearman rho, agreement / loyalty |")
    print("|---|---|---|---|---|")
    for method in methods:
        print(row(method, Path(args.out)))


if __name__ == "__main__":
    main()
