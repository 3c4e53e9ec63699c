"""CIFAR ResNet-18/34: 3x3 stride-1 stem, no max-pool.

Parameter names follow the common CIFAR model zoo (conv1 / bn1 / layerN /
linear, with ``shortcut`` sequences), so zoo checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models.registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, num_blocks[0], 1)
        self.layer2 = self._make_layer(128, num_blocks[1], 2)
        self.layer3 = self._make_layer(256, num_blocks[2], 2)
        self.layer4 = self._make_layer(512, num_blocks[3], 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.linear(features)
        return (logits, features) if return_features else logits


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels)
