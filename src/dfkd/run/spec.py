"""What a run knows of its images and of the real data it is measured on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class ImageSpec:
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None   # recorded in student.pt, so the student knows its data
    # Where mean/std came from (dfkd.data.normalization: "checkpoint", "zoo",
    # "dataset", "given"); recorded in student.pt and summary.json.
    normalization: str = "given"

    def normalization_record(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.normalization}


@dataclass
class EvalData:
    """Real evaluation data (the run's ``eval_split``): uint8 images (scaled and normalised
    here) or float model inputs."""

    images: torch.Tensor
    labels: torch.Tensor


def pixels_transform(mean: torch.Tensor, std: torch.Tensor,
                     channels_last: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 pixels -> normalised model input."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        x = (x.float() / 255.0 - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x
    return transform
