"""dfkd train-teacher: supervised training on real data (a teacher, or a reference student)."""

from __future__ import annotations

import argparse
import sys

from dfkd.commands.flags import common
from dfkd.data import DATASETS, dataset_info
from dfkd.models import SPEC_HELP, create_model, list_models


def add_parser(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("train-teacher", help="train a model on real data (teacher or reference)",
                       description="Supervised training with SGD (Nesterov) and a one-cycle "
                       "cosine schedule. Saves state_dict + metadata (architecture, dataset, "
                       "normalisation, test accuracy, settings), so 'dfkd distill' needs only "
                       "the checkpoint. With a student architecture this is the 'from scratch' "
                       "reference; with --kd-from it is the 'KD with data' reference.")
    t.add_argument("--dataset", default="fashion_mnist", help=f"one of {', '.join(DATASETS)}")
    t.add_argument("--model", default="lenet5", metavar="SPEC",
                   help=f"architecture: {SPEC_HELP} (default lenet5; zoo: "
                        f"{', '.join(list_models())})")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=0.05, help="peak learning rate")
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--label-noise", type=float, default=0.0, metavar="P",
                   help="flip a fraction P of the training labels at random (robustness study)")
    t.add_argument("--kd-from", metavar="CKPT", default=None,
                   help="train by KD from this teacher on the real data (the data-driven ceiling)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--download", action="store_true",
                   help="download the dataset from its official source if it is missing")
    t.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write")
    common(t)
    return t


def handle(args) -> int:
    from dfkd.supervised import SupervisedSettings, train_supervised

    settings = SupervisedSettings(
        dataset=args.dataset, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, label_noise=args.label_noise,
        seed=args.seed, device=args.device or "auto", data_root=args.data_root,
        download=args.download, kd_from=args.kd_from)
    dataset_info(args.dataset)          # fail on bad names before loading anything
    create_model(args.model, 10, 1)
    progress = not args.no_progress and sys.stderr.isatty()
    _, meta = train_supervised(settings, out=args.out, progress=progress)
    print(f"{meta['arch']} on {meta['dataset']}: test Acc@1 {meta['test_acc1']:.2f}% "
          f"({meta['train_seconds']:.0f} s) -> {args.out}")
    return 0
