"""dfkd tune: a recipe's hyperparameters chosen on the val split (Optuna)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dfkd.commands.flags import common, place_sets, progress, tracker_flags, tracker_sets


def add_parser(sub) -> argparse.ArgumentParser:
    tu = sub.add_parser(
        "tune", help="choose a recipe's hyperparameters on the val split (Optuna)",
        description="Runs short distillations with values drawn from the recipe's 'search:' "
        "section and keeps the one with the best final-epoch Acc@1 on the val split (a fixed "
        "part of the training set no student trains on; the test set is never read). A "
        "median pruner stops poor trials early; trial 0 is the recipe as written. The study "
        "lives in DIR/study.db, so running the same command again continues it; --storage "
        "URL shares one study between "
        "machines. Writes DIR/best.yaml (a runnable recipe), DIR/trials.csv, "
        "DIR/signal.json (how well the data-free signal ranked the trials), "
        "DIR/search.png (needs matplotlib) and each trial's run in DIR/trials/NNNN. Needs "
        "pip install 'dfkd[tune]'.",
        epilog="example:\n  dfkd tune --config configs/fashion_mnist/cudfkd_lenet5.yaml "
        "--teacher runs/teacher.pt --trials 20 --set epochs=4 --out runs/tune_cudfkd",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tu.add_argument("--config", required=True, metavar="RECIPE",
                    help="YAML recipe with a 'search:' section: a file, or a bundled recipe "
                         "by name (e.g. fashion_mnist/cudfkd_lenet5)")
    tu.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint")
    tu.add_argument("--trials", type=int, required=True, metavar="N",
                    help="finished trials (complete or pruned) the study should reach")
    tu.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe key for every trial (the trial budget, e.g. "
                         "--set epochs=4); best.yaml keeps the recipe's own values")
    tu.add_argument("--out", required=True, metavar="DIR")
    tu.add_argument("--storage", metavar="URL", default=None,
                    help="Optuna RDB storage shared by several tune processes, e.g. "
                         "postgresql://... (default: sqlite in DIR)")
    tu.add_argument("--study-name", default=None,
                    help="default: the recipe's file name without .yaml")
    tu.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    tracker_flags(tu, "every trial as a run of its own (experiment or group tune-NAME, "
                       "the sampled values among its parameters, its val Acc@1 as final_acc1)")
    common(tu)
    return tu


def handle(args) -> int:
    from dfkd.recipes import resolve_named
    from dfkd.tune import run_tune

    study = run_tune(str(resolve_named(args.config)), args.teacher, args.trials, args.out,
                     overrides=[*place_sets(args), *args.set, *tracker_sets(args)],
                     storage=args.storage, study_name=args.study_name, seed=args.seed,
                     progress=progress(args))
    best = study.best_trial
    print(f"best: trial {best.number}, final val Acc@1 {best.value:.2f}, {best.params}")
    signal = json.loads((Path(args.out) / "signal.json").read_text())
    rho = signal["synthetic_agreement"]
    if rho["spearman"] is not None:
        print(f"data-free signal: Spearman rank correlation of the final synthetic_agreement "
              f"with the final val Acc@1 over {rho['n']} completed trials: "
              f"{rho['spearman']:+.2f}")
    print(f"results in {args.out}/ (best.yaml, trials.csv, signal.json, search.png, study.db)")
    return 0
