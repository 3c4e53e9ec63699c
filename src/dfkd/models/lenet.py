"""LeNet-5 (6-16-120) and LeNet-5-half (3-8-60) with BatchNorm, for 32x32 inputs.

The DAFL MNIST pair. BatchNorm after each convolution gives the teacher the
statistics that data-free methods match. LeNet-5-half has a 60-42-10 head
(about 16K parameters with 10 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from dfkd.models.registry import register_model


class LeNet5(nn.Module):
    def __init__(self, widths: tuple[int, int, int], hidden: int, num_classes: int,
                 in_channels: int) -> None:
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.bn2 = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, 5)
        self.bn3 = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        x = self.pool(self.relu(self.bn1(self.conv1(x))))  # 32 -> 28 -> 14
        x = self.pool(self.relu(self.bn2(self.conv2(x))))  # 14 -> 10 -> 5
        x = self.relu(self.bn3(self.conv3(x))).flatten(1)  # 5 -> 1
        features = self.relu(self.fc1(x))
        logits = self.fc2(features)
        return (logits, features) if return_features else logits


@register_model
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5((6, 16, 120), 84, num_classes, in_channels)


@register_model
def lenet5_half(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5((3, 8, 60), 42, num_classes, in_channels)
