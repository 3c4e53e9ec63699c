"""The models of benchmarks/own_pair.py: a user's own teacher and student, outside dfkd's zoo.

dfkd loads them by file spec (``benchmarks/own_pair_models.py:make_teacher``), as a user's
own models are loaded. Both take 28x28 grey images (no padding to 32 px) and hold BatchNorm
layers (which CuDFKD's generator matches).
"""

from __future__ import annotations

from torch import nn


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def make_teacher(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A VGG-like CNN: 28 -> 14 -> 7 -> global average, about 80K parameters."""
    return nn.Sequential(
        *_block(in_channels, 16), *_block(16, 32), nn.MaxPool2d(2),
        *_block(32, 48), *_block(48, 48), nn.MaxPool2d(2),
        *_block(48, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, num_classes))


def make_student(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A small CNN of a different shape: strided convolutions, about 12K parameters."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 12, 5, stride=2, padding=2, bias=False), nn.BatchNorm2d(12),
        nn.ReLU(inplace=True),
        nn.Conv2d(12, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24),
        nn.ReLU(inplace=True),
        nn.Conv2d(24, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))
