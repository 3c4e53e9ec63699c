"""Batch-level tensor transforms: scaling, normalisation and training augmentation (any device)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dfkd.data.registry import DatasetInfo


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [0, 1]; floating-point input is returned unchanged."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def _stats(info: DatasetInfo, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(info.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return mean, std


def normalize(images: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """(x - mean) / std per channel, for uint8 or [0, 1] float images shaped (..., C, H, W)."""
    x = to_float(images)
    mean, std = _stats(info, x)
    return (x - mean) / std


def denormalize(x: torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Inverse of :func:`normalize`, back to [0, 1] pixel units (not clamped)."""
    mean, std = _stats(info, x)
    return x * std + mean


def augment(
    images: torch.Tensor, info: DatasetInfo, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random crop with zero padding ``info.crop_padding`` and, if ``info.flip``, random
    horizontal flip, each drawn independently per sample of a float batch (N, C, H, W).

    Padding is 0 in the input's units: black for [0, 1] images, the mean colour for normalised
    ones. The random numbers are drawn on the CPU (from ``generator`` when given, so a seeded
    generator gives the same result on every device) and the work is one gather on the input's
    device.
    """
    if images.dim() != 4:
        raise ValueError(f"augment expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    p = info.crop_padding
    dy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=generator)
    rows = dy[:, None] + torch.arange(h)  # (N, H) source rows in the padded image
    cols = dx[:, None] + torch.arange(w)  # (N, W) source columns
    if info.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)  # read the crop right to left
    padded = F.pad(images, (p, p, p, p)) if p else images
    index = rows[:, :, None] * (w + 2 * p) + cols[:, None, :]  # (N, H, W) flat positions
    index = index.view(n, 1, h * w).expand(n, c, h * w).to(images.device)
    return padded.reshape(n, c, -1).gather(2, index).view(n, c, h, w)
