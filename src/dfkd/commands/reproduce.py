"""dfkd reproduce: the papers' CIFAR table with the official recipes."""

from __future__ import annotations

import argparse
from pathlib import Path

from dfkd.commands.flags import common, progress, seed_list
from dfkd.errors import ConfigError


def add_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "reproduce", help="the papers' CIFAR table: every method x pair x seed, official "
        "recipes, published numbers beside the measured ones",
        description="Runs each method's official recipe (configs/cifar10|cifar100/, every "
        "value traced to its official script) on the pairs of the papers' CIFAR table (C10 "
        "R34->R18, C10 WRN40-2->WRN16-1, C10 WRN40-2->WRN40-1, C100 R34->R18, C100 "
        "WRN40-2->WRN16-2) with the public CIFAR model zoo's teachers, through 'dfkd bench' "
        "(DIR/<pair>/: interrupted runs resume when the command is repeated). Writes "
        "DIR/table.md and DIR/table.json: measured test Acc@1 (mean ± std over seeds) beside "
        "the published one, paired differences against CuDFKD with 95% intervals, and hours "
        "per run. fp32 by default, as the papers' code; --fast for bf16 + channels_last + "
        "torch.compile (CUDA). Each teacher is fed the zoo's normalisation.",
        epilog="example:\n  dfkd reproduce --data-root ~/data --teachers "
        "checkpoints/pretrained --seeds 0,1,2 --gpus 4 --out runs/reproduce\n"
        "  (--data-root holds cifar-10-batches-py/ and cifar-100-python/; --teachers holds "
        "cifar10_resnet34.pth, cifar10_wrn40_2.pth, cifar100_resnet34.pth, "
        "cifar100_wrn40_2.pth)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--teachers", required=True, metavar="DIR",
                   help="folder of the zoo's teachers, named <dataset>_<arch>.pth")
    r.add_argument("--methods", default="all",
                   help="comma-separated rows (default all: every official row a method "
                        "declares; --dry-run lists them)")
    r.add_argument("--pairs", default="all",
                   help="comma-separated pairs (default all): c10_resnet34_resnet18, "
                        "c10_wrn40_2_wrn16_1, c10_wrn40_2_wrn40_1, c100_resnet34_resnet18, "
                        "c100_wrn40_2_wrn16_2")
    r.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    r.add_argument("--fast", action="store_true",
                   help="bf16 autocast, channels_last and torch.compile (CUDA) instead of fp32")
    r.add_argument("--gpus", type=int, default=0, metavar="N",
                   help="one run per GPU at a time on N GPUs (default: one run at a time on "
                        "the default device)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of every run (e.g. --set epochs=1 for a smoke "
                        "run; the table then says the recipes were not run in full)")
    r.add_argument("--out", required=True, metavar="DIR")
    r.add_argument("--dry-run", action="store_true", help="list what would run, run nothing")
    r.add_argument("--report-only", action="store_true",
                   help="write the table from the runs finished so far, run nothing")
    common(r, data_root="required (but with --dry-run or --report-only): the folder holding "
                        "cifar-10-batches-py/ and cifar-100-python/")
    return r


def print_plan(plan: dict[str, tuple[int, float, int]]) -> None:
    """The GPU hours of the runs to do, by the published hours per run."""
    if not plan:
        print("\nnothing to run: every run is done")
        return
    print("\nGPU hours of the runs to do, by the authors' published hours per run (their GPUs; "
          "dfkd's own timings: docs/guides/reproduce-cifar.md):")
    for row, (count, hours, unknown) in plan.items():
        note = f" ({unknown} without a published figure)" if unknown else ""
        print(f"  {row:<14} {count:>3} runs  {hours:8.1f} h{note}")
    count = sum(c for c, _, _ in plan.values())
    unknown = sum(u for _, _, u in plan.values())
    hours = sum(h for _, h, _ in plan.values())
    note = f" ({unknown} without a published figure)" if unknown else ""
    print(f"  {'total':<14} {count:>3} runs  {hours:8.1f} h{note}")


def handle(args) -> int:
    from dfkd.reproduce import planned_hours, run_reproduce

    if not args.data_root and not (args.dry_run or args.report_only):
        raise ConfigError("--data-root DIR is required: the folder holding the official "
                          "cifar-10-batches-py/ and cifar-100-python/")
    runs = run_reproduce(args.data_root or ".", args.teachers, args.out, methods=args.methods,
                         pairs=args.pairs, seeds=seed_list(args.seeds),
                         precision="fast" if args.fast else "fp32", gpus=args.gpus,
                         overrides=args.set, dry_run=args.dry_run,
                         report_only=args.report_only, progress=progress(args),
                         device=args.device)
    if args.dry_run:
        for run in runs:
            print(f"{run['state']:>6}  {run['pair']}  {run['method']} seed {run['seed']}  "
                  f"-> {run['folder']}")
        print_plan(planned_hours(runs))
    else:
        print((Path(args.out) / "table.md").read_text())
    return 0
