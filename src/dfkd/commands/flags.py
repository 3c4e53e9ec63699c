"""Flags that several commands share, and what they become: settings, seeds, a model path."""

from __future__ import annotations

import argparse
import json

from dfkd.checkpoint import missing_rebuild_flags, read_model_meta
from dfkd.errors import ConfigError

NORM_HELP = ("the input normalisation the model was trained with: auto (default: the "
             "checkpoint's own; for a bare state dict on CIFAR-10/100, the public CIFAR model "
             "zoo's constants; else the dataset's), zoo, dataset, or MEAN:STD (comma-separated "
             "per channel, e.g. 0.5,0.5,0.5:0.25,0.25,0.25)")


def common(sp: argparse.ArgumentParser,
           data_root: str = "folder holding the dataset files (when given, the only "
                            "place searched; default: the standard places)") -> None:
    """--device, --data-root, --no-progress and --debug."""
    sp.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                    help="where to run (default: auto = cuda if available)")
    sp.add_argument("--data-root", metavar="DIR", default=None, help=data_root)
    sp.add_argument("--no-progress", action="store_true",
                    help="no progress bar; print one line per epoch instead")
    debug(sp)


def debug(sp: argparse.ArgumentParser) -> None:
    """--debug after the command as well as before it."""
    sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                    help="show full tracebacks on errors")


def tracker_flags(sp: argparse.ArgumentParser, what: str) -> None:
    """--tracker and --tracker-uri (dfkd.trackers), for distill, bench and tune."""
    sp.add_argument("--tracker", action="append", default=None, metavar="NAME",
                    help=f"log {what} to an experiment tracker as well (repeatable): "
                         "tensorboard (event files in the run folder's tensorboard/), mlflow "
                         "(the config as parameters, each epoch's metrics, sample grids and "
                         "the student), wandb (offline in the run folder's wandb/ unless you "
                         "have logged in). Each epoch is logged once, also across kills and "
                         "--resume; a tracker that fails warns once and the run goes on. "
                         "Needs pip install 'dfkd[NAME]'")
    sp.add_argument("--tracker-uri", metavar="URI", default=None,
                    help="MLflow's tracking URI, e.g. http://127.0.0.1:5000 or "
                         "sqlite:///mlflow.db (default: $MLFLOW_TRACKING_URI, else "
                         "sqlite:///mlflow.db in the current folder)")


def tracker_sets(args) -> list[str]:
    """--tracker/--tracker-uri as --set overrides (JSON: YAML reads it back unchanged)."""
    out = [f"tracker={json.dumps(args.tracker)}"] if args.tracker else []
    return out + ([f"tracker_uri={json.dumps(args.tracker_uri)}"] if args.tracker_uri else [])


def place_sets(args) -> list[str]:
    """--device/--data-root as --set overrides, for the commands that take settings."""
    out = [f"device={args.device}"] if args.device else []
    # JSON-quoted: the path stays a string whatever it looks like in YAML (~, yes, 1e3)
    return out + ([f"data_root={json.dumps(args.data_root)}"] if args.data_root else [])


def progress(args) -> bool | None:
    """None lets the trainer decide: a bar on a terminal, one line per epoch otherwise."""
    return False if args.no_progress else None


def seed_list(text: str) -> list[int]:
    """--seeds: comma-separated integers."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError as exc:
        raise ConfigError(f"--seeds expects comma-separated integers, got '{text}'") from exc


def model_path(args) -> str:
    """PATH or --checkpoint PATH: one of them."""
    if args.path and args.checkpoint and args.path != args.checkpoint:
        raise ConfigError("give the checkpoint once: PATH or --checkpoint PATH")
    path = args.path or args.checkpoint
    if not path:
        raise ConfigError("which model? give a checkpoint file or a run folder (PATH)")
    return path


def require_rebuild_flags(path: str, args, needs_data: bool) -> None:
    """Every flag the model file still needs, named in one message (not one per try)."""
    missing = missing_rebuild_flags(read_model_meta(path), model=args.model,
                                    dataset=args.dataset, needs_data=needs_data)
    if missing:
        raise ConfigError(f"'{path}' does not record all that rebuilds its model; pass "
                          + " and ".join(missing))
