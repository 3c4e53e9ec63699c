"""Where a distilled student loses against its teacher, class by class, on the val split.

For each run folder: per class, the teacher's and the student's val Acc@1 and their agreement;
how often each predicts the class; and, when the run's checkpoint holds a replay pool
(``cudfkd.replay``), the class frequencies of those synthetic images by the teacher's argmax.
With CuDFKD's quantile pace it also gives, per class of the pool, the live student's KD loss
on those images and their self-paced weight v* at the run's last lambda: whether the
curriculum holds some classes back. The test set is not read.

    python benchmarks/class_balance.py --teacher results/tables/teacher.pt RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from dfkd import curriculum as cur
from dfkd.api import load_run_checkpoint
from dfkd.checkpoint import CHECKPOINT, load_model_checkpoint
from dfkd.data.registry import dataset_info, load_split
from dfkd.data.transforms import normalize
from dfkd.methods.cudfkd import CuDFKDSettings
from dfkd.metrics import predict


def percent(hits: torch.Tensor) -> float:
    return 100.0 * hits.float().mean().item() if len(hits) else float("nan")


def pool_curriculum(checkpoint: dict, student: torch.nn.Module, teacher: torch.nn.Module,
                    images01: torch.Tensor, info) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per image of the pool: the live student's KD loss (in train mode, on batches of the
    run's size, as in its steps) and v* at the run's last lambda; None without the pace."""
    config, method = checkpoint["config"], checkpoint["method"]
    if config["method"] != "cudfkd" or "quantile" not in method:
        return None
    s = CuDFKDSettings(**config["cudfkd"])
    if s.curriculum == "none":
        return None
    live = copy.deepcopy(student)
    live.load_state_dict(checkpoint["student"])
    live.train()
    losses = []
    with torch.no_grad():
        for batch in images01.split(config["batch_size"]):
            x = normalize(batch, info)
            t, st = teacher(x), live(x)
            losses.append(s.kd(st, t, per_sample=True))
    loss = torch.cat(losses)
    return loss, cur.v_star_at_quantile(loss, method["quantile"]["last"], s.lambda_0,
                                        s.curriculum)


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
    teacher.eval()
    t_pred = predicted(teacher, images)
    classes = range(info.num_classes)
    for run in args.runs:
        student, _ = load_model_checkpoint(run)
        s_pred = predicted(student, images)
        print(f"\n{run}: val Acc@1 {percent(s_pred == labels):.2f} (teacher "
              f"{percent(t_pred == labels):.2f}), agreement {percent(s_pred == t_pred):.2f}")
        pool = paced = None
        if (Path(run) / CHECKPOINT).is_file():
            checkpoint = load_run_checkpoint(run)
            replay = checkpoint["method"].get("replay")
            if replay is not None:
                pool_images = replay["data"][: replay["count"]]
                synthetic = predicted(teacher, pool_images)
                pool = torch.bincount(synthetic, minlength=info.num_classes)
                paced = pool_curriculum(checkpoint, student, teacher, pool_images, info)
        header = "| class | teacher acc | student acc | agreement | true share | teacher " \
                 "predicts | student predicts |"
        if pool is not None:
            header += " replay pool share |"
        if paced is not None:
            header += " pool KD loss (live student) | pool mean v* | pool v* < 0.5 |"
        print(header)
        print("|---" * header.count(" |") + "|")
        for c in classes:
            own = labels == c
            row = (f"| {c} | {percent(t_pred[own] == c):.1f} | {percent(s_pred[own] == c):.1f} "
                   f"| {percent(s_pred[own] == t_pred[own]):.1f} | {percent(own):.1f} "
                   f"| {percent(t_pred == c):.1f} | {percent(s_pred == c):.1f} |")
            if pool is not None:
                row += f" {100.0 * pool[c].item() / pool.sum().item():.1f} |"
            if paced is not None:
                loss, v = (values[synthetic == c] for values in paced)
                row += f" {loss.mean():.3f} | {v.mean():.3f} | {percent(v < 0.5):.1f} |"
            print(row)


if __name__ == "__main__":
    main()
