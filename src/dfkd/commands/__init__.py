"""The ``dfkd`` command. Each subcommand is a module of this package, its flags beside its
handler; each handler parses, builds the settings and calls the API."""

from __future__ import annotations

import argparse
import gc
import sys
import traceback

from dfkd.commands import bench, distill, evaluate, export, plot, reproduce, train_teacher, tune
from dfkd.errors import DfkdError

# In the order --help lists them.
COMMANDS = (train_teacher, evaluate, distill, bench, reproduce, tune, export, plot)

EPILOG = """examples:
  dfkd train-teacher --dataset fashion_mnist --model lenet5 --epochs 10 --out runs/teacher.pt
  dfkd evaluate --checkpoint runs/teacher.pt
  dfkd distill --teacher runs/teacher.pt --student lenet5_half --method cudfkd --out runs/cudfkd
  dfkd distill --config configs/fashion_mnist/cudfkd_lenet5.yaml --teacher runs/teacher.pt \\
      --set epochs=1 --out runs/smoke
  dfkd distill --resume runs/cudfkd
  dfkd evaluate runs/cudfkd                  # the run's student (runs/cudfkd/student.pt)
  dfkd export runs/cudfkd --format onnx --out student.onnx
  dfkd plot runs/cudfkd runs/dafl --out curves.png
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dfkd", description="Data-free knowledge distillation: train a student to imitate "
        "a teacher with no real training data (CuDFKD and baselines).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(handle=command.handle)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    try:
        return args.handle(args)
    except DfkdError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"dfkd: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("dfkd: interrupted", file=sys.stderr)
        return 130
    finally:
        # A run that failed is still held by its traceback's reference cycles: free it (and
        # a process group its DDP models held) now, not in interpreter teardown.
        gc.collect()
