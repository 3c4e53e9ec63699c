"""Where a distilled student loses against its teacher, class by class, on the val split.

For each run folder: per class, the teacher's and the student's val Acc@1 and their agreement;
how often each predicts the class; and, when the run's checkpoint holds a replay pool
(``cudfkd.replay``), the class frequencies of those synthetic images by the teacher's argmax.
The test set is not read.

    python benchmarks/class_balance.py --teacher results/tables/teacher.pt RUN [RUN ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dfkd.api import load_run_checkpoint
from dfkd.checkpoint import load_model_checkpoint
from dfkd.data.registry import dataset_info, load_split
from dfkd.data.transforms import normalize
from dfkd.engine import CHECKPOINT
from dfkd.metrics import predict


def percent(hits: torch.Tensor) -> float:
    return 100.0 * hits.float().mean().item() if len(hits) else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("runs", nargs="+", help="run folders of dfkd distill")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = dataset_info(args.dataset)
    images, labels = load_split(info.name, "val")
    cpu = torch.device("cpu")

    def predicted(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return predict(model, batch, 1000, lambda b: normalize(b, info), cpu).argmax(1)

    teacher, _ = load_model_checkpoint(args.teacher)
    t_pred = predicted(teacher, images)
    classes = range(info.num_classes)
    for run in args.runs:
        student, _ = load_model_checkpoint(run)
        s_pred = predicted(student, images)
        print(f"\n{run}: val Acc@1 {percent(s_pred == labels):.2f} (teacher "
              f"{percent(t_pred == labels):.2f}), agreement {percent(s_pred == t_pred):.2f}")
        pool = None
        if (Path(run) / CHECKPOINT).is_file():
            replay = load_run_checkpoint(run)["method"].get("replay")
            if replay is not None:
                synthetic = predicted(teacher, replay["data"][: replay["count"]])
                pool = torch.bincount(synthetic, minlength=info.num_classes)
        print("| class | teacher acc | student acc | agreement | true share | teacher predicts "
              "| student predicts |" + (" replay pool share |" if pool is not None else ""))
        print("|---|---|---|---|---|---|---|" + ("---|" if pool is not None else ""))
        for c in classes:
            own = labels == c
            row = (f"| {c} | {percent(t_pred[own] == c):.1f} | {percent(s_pred[own] == c):.1f} "
                   f"| {percent(s_pred[own] == t_pred[own]):.1f} | {percent(own):.1f} "
                   f"| {percent(t_pred == c):.1f} | {percent(s_pred == c):.1f} |")
            if pool is not None:
                row += f" {100.0 * pool[c].item() / pool.sum().item():.1f} |"
            print(row)


if __name__ == "__main__":
    main()
