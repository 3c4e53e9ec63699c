"""Wide ResNets WRN-depth-k (dropout 0), with the CIFAR zoo's parameter names:
conv1 / block1..3 (``layer.N.bn1/conv1/bn2/conv2/convShortcut``) / bn1 / fc."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models.registry import register_model


class WideBasic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal_in_out = in_planes == planes
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pre-activation block: the shortcut of a widening block sees the activated input.
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class NetworkBlock(nn.Module):
    def __init__(self, blocks: int, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            WideBasic(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
            for i in range(blocks)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.block1 = NetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = NetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = NetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        features = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).flatten(1)
        logits = self.fc(features)
        return (logits, features) if return_features else logits


@register_model
def wrn16_1(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 1, num_classes, in_channels)


@register_model
def wrn16_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(16, 2, num_classes, in_channels)


@register_model
def wrn40_1(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 1, num_classes, in_channels)


@register_model
def wrn40_2(num_classes: int = 10, in_channels: int = 3) -> WideResNet:
    return WideResNet(40, 2, num_classes, in_channels)
