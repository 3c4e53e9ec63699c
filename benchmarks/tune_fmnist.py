"""Tune every Fashion-MNIST recipe with one budget (issue #11): same trials, same trial size.

Runs ``dfkd tune`` for each method's recipe in configs/fashion_mnist/ with the same
``--trials`` and the same ``--set`` (the per-trial budget), a pool of ``--jobs`` studies
at once with cores/jobs threads each. A study that was interrupted continues where it
was (dfkd tune's SQLite storage in OUT/METHOD). Then it prints one table: trial 0 (the
recipe as written) against the best trial, on the val split, and the data-free signal's
Spearman rho with val Acc@1 over each study's completed trials (dfkd tune's signal.json).

    python benchmarks/tune_fmnist.py --teacher runs/tables/teacher.pt \\
        --out runs/tune_fmnist10 --trials 8 --set epochs=10 --jobs 2

With ``--install`` (the same arguments) it runs nothing and writes each finished study's
best.yaml over the recipe it started from (cudfkd's to cudfkd_lenet5_bench.yaml: the quick
start's recipe stays the one chosen at its own 30 epochs), below the recipe's comment and
the command.
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

import yaml

from dfkd.bench import threads_per_job
from dfkd.methods import list_methods

# Every registered method's recipe: cudfkd is the quick start's (its additions chosen in the
# ablations, on val); cudfkd_paper the paper's method alone, tuned like every baseline.
METHODS = [*list_methods(), "cudfkd_paper"]
CONFIGS = Path("configs/fashion_mnist")
RECIPES = {m: CONFIGS / f"{m}_lenet5.yaml" for m in METHODS}
RECIPES["cudfkd_paper"] = CONFIGS / "cudfkd_lenet5_paper.yaml"
# Where --install writes a finished study's best.yaml: over the recipe it started from,
# except the quick start's, which is chosen at its own 30 epochs (the bench runs 10).
INSTALL = {**RECIPES, "cudfkd": CONFIGS / "cudfkd_lenet5_bench.yaml"}
FINISHED = ("COMPLETE", "PRUNED")  # trials.csv states of a trial that ran to its end


def finished_trials(study: Path) -> int:
    """Trials of the study that ran to their end (completed or pruned); 0 before any."""
    if not (study / "trials.csv").exists():
        return 0
    with open(study / "trials.csv") as f:
        return sum(t["state"] in FINISHED for t in csv.DictReader(f))


def tune_one(method: str, args: argparse.Namespace, threads: int) -> None:
    out = Path(args.out) / method
    if finished_trials(out) >= args.trials:
        return  # done: an installed recipe would no longer be the question the study asked
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    sets = [a for s in args.set for a in ("--set", s)]
    cmd = [sys.executable, "-m", "dfkd", "tune", "--config", str(RECIPES[method]),
           "--teacher", args.teacher,
           "--trials", str(args.trials), "--out", str(out), "--no-progress", *sets]
    with open(Path(args.out) / f"{method}.log", "a") as log:
        subprocess.run(cmd, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)


def read_trials(study: Path) -> tuple[list[dict], dict, dict]:
    """A study's trials.csv rows, trial 0 (the recipe as it was: the attempt of its values
    that finished, when trial 0 itself was interrupted and retried) and the best completed
    trial by val Acc@1."""
    with open(study / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    done = [t for t in trials if t["state"] == "COMPLETE"]
    zero = [t for t in trials if "0" in (t["number"], t.get("retry_of"))]
    first = next((t for t in zero if t["state"] in FINISHED), zero[0])
    return trials, first, max(done, key=lambda t: float(t["val_acc1"]))


def row(method: str, out: Path) -> str:
    if not finished_trials(out / method):
        return f"| {method} | 0 + 0 | - | - | - |"
    trials, first, best = read_trials(out / method)
    done = sum(t["state"] == "COMPLETE" for t in trials)
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    signal = json.loads((out / method / "signal.json").read_text())
    rho = [signal[k]["spearman"] for k in ("synthetic_agreement", "synthetic_loyalty")]
    rho = " / ".join("-" if r is None else f"{r:+.2f}" for r in rho)
    trial0 = f"{float(first['val_acc1']):.2f}" if first["val_acc1"] else "-"
    return (f"| {method} | {done} + {pruned} | {trial0} | "
            f"{float(best['val_acc1']):.2f} (trial {best['number']}) | {rho} |")


INSTALLED = "# The values below are the study's best trial"  # where an installed header ends


def changed_values(study: Path) -> str:
    """The search keys whose best-trial value differs from trial 0's (the recipe as it
    was), as 'key a -> b' items."""
    search = yaml.safe_load((study / "best.yaml").read_text()).get("search") or {}
    _, first, best = read_trials(study)
    items = []
    def shown(value: str) -> str:   # a number to 3 digits; a choice (a string) as it is
        try:
            return f"{float(value):.3g}"
        except ValueError:
            return value

    def differs(a: str, b: str) -> bool:
        try:
            return float(a) != float(b)
        except ValueError:
            return a != b

    for key in search:
        if differs(first[key], best[key]):
            items.append(f"{key} {shown(first[key])} -> {shown(best[key])}")
    return ", ".join(items) or "none (the recipe's own values were best)"


def install(method: str, out: Path, trials: int, command: str) -> str:
    """Write a finished study's best.yaml as the method's recipe, under the comment that
    describes the recipe, with the command that tuned it and the values it changed."""
    study = out / method
    finished = finished_trials(study)
    if finished < trials:
        return f"{method}: {finished} of {trials} trials finished, not installed"
    about = []
    for line in RECIPES[method].read_text().splitlines():
        if not line.startswith("#") or line.startswith((INSTALLED, "# Tuned on the val split")):
            break
        about.append(line)
    target, note = INSTALL[method], ""
    if target != RECIPES[method]:
        about.insert(0, f"# The bench's {RECIPES[method].name}: the same recipe, its values "
                        "tuned at the bench's budget. Its comment:")
        note = " (point bench.yaml's recipes at it)"
    best = (study / "best.yaml").read_text()
    target.write_text("\n".join(about) + f"\n{INSTALLED}; the comment above describes the "
                      "recipe the search started from.\n"
                      f"# Changed by the tune: {changed_values(study)}.\n"
                      f"# Tuned on the val split, never on test: {command}\n" + best)
    return f"{method}: {target} <- {study / 'best.yaml'}{note}"


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
    p.add_argument("--install", action="store_true",
                   help="run nothing: write each finished study's best.yaml as its recipe")
    args = p.parse_args()
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    if args.install:
        sets = "".join(f" --set {s}" for s in args.set)
        command = (f"python benchmarks/tune_fmnist.py --teacher {args.teacher} --out {args.out}"
                   f" --trials {args.trials}{sets}")
        for method in methods:
            print(install(method, Path(args.out), args.trials, command))
        return
    threads = args.threads or threads_per_job(args.jobs)
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
