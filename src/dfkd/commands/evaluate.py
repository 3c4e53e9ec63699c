"""dfkd evaluate: the accuracy of a checkpoint, or of a run's student, on real data."""

from __future__ import annotations

import argparse
import json

from dfkd.commands.flags import NORM_HELP, common, model_path, require_rebuild_flags
from dfkd.models import SPEC_HELP


def add_parser(sub) -> argparse.ArgumentParser:
    e = sub.add_parser(
        "evaluate", help="test accuracy of a checkpoint or of a run's student",
        description="Acc@1 (and Acc@5 with more than 5 classes) on the test set (or --split "
        "val). PATH is a model checkpoint (train-teacher's .pt, a student.pt or "
        "student.safetensors, a zoo file with --model and --dataset) or a run folder of "
        "'dfkd distill', whose student.pt is evaluated; on the split the run was measured on "
        "(summary.json's eval_split: test unless the run used --eval-split val) it gives "
        "the summary's final_acc1.")
    e.add_argument("path", nargs="?", metavar="PATH", help="checkpoint file or run folder")
    e.add_argument("--checkpoint", metavar="PATH", help="the same as PATH")
    e.add_argument("--dataset", default=None, help="needed only if the checkpoint does not say")
    e.add_argument("--model", default=None, metavar="SPEC",
                   help=f"architecture, for checkpoints that do not name theirs (a zoo "
                        f"file, a student built in Python): {SPEC_HELP}")
    e.add_argument("--norm", metavar="NORM", default=None, help=NORM_HELP)
    e.add_argument("--split", choices=("test", "val"), default="test",
                   help="real data to measure on (default test; val: the held-out part of the "
                        "training set, for choosing configurations)")
    e.add_argument("--json", action="store_true", help="print JSON instead of text")
    common(e)
    return e


def handle(args) -> int:
    from dfkd.supervised import evaluate_checkpoint

    require_rebuild_flags(model_path(args), args, needs_data=True)
    result = evaluate_checkpoint(model_path(args), dataset=args.dataset,
                                 data_root=args.data_root,
                                 device=args.device or "auto", model=args.model,
                                 split=args.split, norm=args.norm)
    if args.json:
        print(json.dumps(result))
    else:
        extra = f"  Acc@5 {result['acc5']:.2f}%" if "acc5" in result else ""
        source = result["normalization"]["source"]
        norm = "" if source == "checkpoint" else f"  (input normalisation: {source})"
        print(f"{result['arch']} on {result['dataset']} {result['split']}: "
              f"Acc@1 {result['acc1']:.2f}%{extra}{norm}")
    return 0
