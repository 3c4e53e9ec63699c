"""Does the kept student gain from BatchNorm statistics recomputed at the end? (issue #12)

For each finished run folder of a CuDFKD recipe with replay, the kept student
(``student.pt``) is evaluated on the val split as saved, then again after its BN running
statistics are reset and recomputed, as a plain average over batches (momentum None),
from the run's own replay pool: the last synthetic images of the run, read from its
``checkpoint.pt``. Data-free: only synthetic images feed the statistics. Val only; this
script never reads the test set.

    python benchmarks/bn_recalibration.py runs/ablation10/ema_glate/seed{0,1,2}
"""

from __future__ import annotations

import argparse
import copy

import torch

from dfkd.api import load_run_checkpoint
from dfkd.checkpoint import load_model_checkpoint
from dfkd.data.registry import dataset_info, load_split
from dfkd.hooks import batchnorm_layers
from dfkd.metrics import accuracy, predict
from dfkd.supervised import normalizer

# (batch size, images) of each recomputation: the training batch and a larger one, over
# the whole pool, and the training batch over a quarter of it
SETTINGS = [(64, 20000), (256, 20000), (64, 5000)]


def recalibrated(net: torch.nn.Module, images01: torch.Tensor, mean: torch.Tensor,
                 std: torch.Tensor, batch: int, count: int) -> torch.nn.Module:
    """A copy of ``net`` whose BN statistics are the average over ``count`` pool images
    (a seeded draw) in batches of ``batch``."""
    net = copy.deepcopy(net)
    for module in batchnorm_layers(net):
        module.reset_running_stats()
        module.momentum = None  # a cumulative average, not an exponential one
    order = torch.randperm(len(images01), generator=torch.Generator().manual_seed(0))[:count]
    net.train()
    with torch.no_grad():
        for start in range(0, len(order), batch):
            net((images01[order[start:start + batch]] - mean) / std)
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished dfkd distill folders with replay on")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = dataset_info("fashion_mnist")
    val_x, val_y = load_split(info.name, "val", None)
    cpu = torch.device("cpu")
    norm = normalizer(info.mean, info.std, cpu)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    print("| run | val Acc@1 as kept | " + " | ".join(
        f"BN from {n} pool images, batch {b}" for b, n in SETTINGS) + " |")
    print("|---" * (2 + len(SETTINGS)) + "|")
    for run in args.runs:
        net, _ = load_model_checkpoint(f"{run}/student.pt")
        replay = load_run_checkpoint(run)["method"]["replay"]
        pool = replay["data"][: replay["count"]].float()
        cells = [accuracy(predict(model, val_x, 1024, norm, cpu), val_y)["acc1"] for model in
                 [net, *(recalibrated(net, pool, mean, std, b, n) for b, n in SETTINGS)]]
        print(f"| {run} | " + " | ".join(f"{c:.2f}" for c in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
