"""dfkd bench: methods x seeds on one teacher/student pair at one budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfkd.commands.flags import common, place_sets, progress, seed_list, tracker_flags, tracker_sets


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser(
        "bench", help="compare methods x seeds on one teacher/student pair at one budget",
        description="Runs every method (and the references 'scratch' and 'kd_with_data') for "
        "every seed under identical conditions, at most --jobs at once, then writes "
        "DIR/results.md, results.csv, results.json (mean ± std and a 95% interval over seeds; "
        "the first method minus each other one as a paired difference over the same seeds) "
        "and curves.png (needs matplotlib). Finished runs are skipped and interrupted ones "
        "resumed, so re-running an interrupted bench continues it; a run whose stored config "
        "differs from the current one is refused, naming the key.")
    b.add_argument("--config", required=True, metavar="FILE",
                   help="bench YAML: a file, or a bundled one by name (e.g. "
                        "fashion_mnist/bench). Its recipes: entries are found next to the "
                        "bench file first, then in the working folder, then among the bundled "
                        "recipes; base.teacher and other paths are relative to the working "
                        "folder")
    b.add_argument("--methods", default="all",
                   help="comma-separated rows: methods, the references scratch and "
                        "kd_with_data, and rows named in the config's recipes (e.g. "
                        "cudfkd_paper), e.g. cudfkd,cudfkd_paper,dafl,scratch (default all: "
                        "every method with a recipe of the config's family, its recipes: rows "
                        "and the references; the first row is the one the others are "
                        "compared with)")
    b.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    b.add_argument("--teacher", metavar="CKPT", default=None,
                   help="teacher checkpoint instead of the config's base.teacher (e.g. a "
                        "noisy-label teacher for the robustness table)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the shared budget (base), e.g. --set epochs=5")
    b.add_argument("--out", required=True, metavar="DIR")
    b.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="runs at once, each in its own process with cores/N threads "
                        "(default: one per CPU core this process may use, which respects "
                        "taskset and SLURM/cgroup cpusets; 1 runs them one after another "
                        "here)")
    b.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="run one run per GPU at a time on N GPUs (sets --jobs N; each worker "
                        "sees only its GPU)")
    b.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    b.add_argument("--report-only", action="store_true",
                   help="write the results from the runs finished so far, run nothing "
                        "(DIR must not be in use by a running bench)")
    tracker_flags(b, "every run (one MLflow experiment or W&B group named after DIR; tags "
                      "method, seed, teacher)")
    common(b)
    return b


def handle(args) -> int:
    from dfkd.bench import run_bench, usable_cores

    seeds = seed_list(args.seeds)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    runs = run_bench(args.config, methods, seeds, args.out, dry_run=args.dry_run,
                     report_only=args.report_only, teacher=args.teacher,
                     overrides=[*place_sets(args), *args.set, *tracker_sets(args)],
                     progress=progress(args), jobs=args.jobs or usable_cores(), gpus=args.gpus)
    if args.dry_run:
        for run in runs:
            print(f"{run['state']:>6}  {run['method']} seed {run['seed']}  -> {run['folder']}")
    else:
        print((Path(args.out) / "results.md").read_text())
    return 0
