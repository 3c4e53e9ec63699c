"""dfkd plot: the curves of one or more runs in one PNG."""

from __future__ import annotations

import argparse

from dfkd.commands.flags import debug


def add_parser(sub) -> argparse.ArgumentParser:
    pl = sub.add_parser(
        "plot", help="draw the curves of one or more runs into a PNG",
        description="One figure, one line per run: Acc@1 and Agreement@1 by epoch and by "
        "training wall time, the data-free signal (agreement on the synthetic probe), the "
        "loss terms (student and generator), the pace λ, the "
        "adversarial weight and the v* statistics of the self-paced weights; panels whose "
        "keys no run logged are left out. A folder that is not a run (a bench or tune "
        "output) stands for every run below it. Needs pip install 'dfkd[plot]'.",
        epilog="example:\n  dfkd plot runs/cudfkd runs/dafl --out compare.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    pl.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders")
    pl.add_argument("--out", required=True, metavar="FILE.png", help="image to write")
    debug(pl)
    return pl


def handle(args) -> int:
    from dfkd.report import plot_run_folders

    labels = plot_run_folders(args.runs, args.out)
    print(f"wrote {args.out} ({len(labels)} run{'s' if len(labels) > 1 else ''}: "
          f"{', '.join(labels)})")
    return 0
