"""Shared fixtures: a small real Fashion-MNIST teacher, trained once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dfkd.checkpoint import save_model_checkpoint
from dfkd.data import dataset_info, load_split, normalize
from dfkd.models import create_model


@pytest.fixture(scope="session")
def fmnist_teacher(tmp_path_factory):
    """A LeNet-5 trained for a few seconds on 12k real Fashion-MNIST images (~85%)."""
    torch.manual_seed(0)
    info = dataset_info("fashion_mnist")
    images, labels = load_split("fashion_mnist", "train")
    x_all = normalize(images[:12000], info)
    y_all = labels[:12000]
    model = create_model("lenet5", 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(2):
        order = torch.randperm(len(x_all))
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    test_x, test_y = load_split("fashion_mnist", "test")
    with torch.no_grad():
        acc = (model(normalize(test_x, info)).argmax(1) == test_y).float().mean().item() * 100
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model_checkpoint(path, model, {
        "arch": "lenet5", "dataset": "fashion_mnist", "num_classes": 10,
        "image_shape": list(info.image_shape), "mean": list(info.mean), "std": list(info.std),
        "test_acc1": acc})
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny runs: one thread is faster than two on a shared CPU (``pytestmark`` opts in)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TIMING = ("synthesis_seconds", "student_seconds", "elapsed_seconds", "peak_memory_mb")


def metrics_rows(run_dir: Path) -> list[dict]:
    """A run's metrics.jsonl without its wall-clock figures, which differ between runs;
    everything else must match between a resumed and an uninterrupted run."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


class Const(torch.nn.Module):
    """Outputs a fixed tensor whatever the input; ``0 * x`` keeps the input in the graph."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value + 0 * x.sum()
