"""ResNet-18/34 in the two layouts that DFKD teacher checkpoints come in.

* ``resnet18`` / ``resnet34``: the CIFAR ResNet (3x3 stride-1 stem, no max-pool) with
  the common CIFAR zoo's parameter names (conv1 / bn1 / layerN / linear, ``shortcut``
  sequences), the DAFL/CMI/CuDFKD ``classifiers/resnet.py``.
* ``resnet18_tiny`` / ``resnet34_tiny``: the official CuDFKD Tiny-ImageNet teacher,
  torchvision's ResNet with names ``downsample`` and ``fc`` whose stem the recipe swaps
  for ``nn.Conv2d(3, 64, 3, 1, 1)`` (bias on, PyTorch's default) and an empty max-pool
  (ljrprocc/DataFree, datafree_kd.py lines 300-305).
* ``resnet18_imagenet`` / ``resnet34_imagenet``: torchvision's ResNet as it is, with its
  7x7 stride-2 stem and 3x3 max-pool. The official CuDFKD Tiny-ImageNet *student* is
  this ResNet-18 with a 200-way ``fc`` (datafree_kd.py line 298 and registry.py
  ``get_model``: only the teacher's stem is replaced).

All of them average-pool adaptively, so any input size works (32x32 and 64x64 alike).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models.registry import register_model

Stem = Literal["cifar", "tiny", "imagenet"]


class BasicBlock(nn.Module):
    """The CIFAR zoo's block: the skip path is ``shortcut`` (an empty Sequential when it
    is the identity)."""

    skip_name: ClassVar[str] = "shortcut"
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        skip: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            skip = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.add_module(self.skip_name, skip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self.skip_name)(x))


class TorchvisionBasicBlock(BasicBlock):
    """torchvision's block: the same computation, the skip path named ``downsample``."""

    skip_name = "downsample"


class ResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int, in_channels: int,
                 stem: Stem = "cifar") -> None:
        super().__init__()
        torchvision_names = stem != "cifar"
        block = TorchvisionBasicBlock if torchvision_names else BasicBlock
        self.head_name = "fc" if torchvision_names else "linear"
        self.in_planes = 64
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            # CuDFKD's Tiny-ImageNet teacher replaces torchvision's stem conv by
            # nn.Conv2d(3, 64, 3, 1, 1), which keeps PyTorch's default bias.
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=stem == "tiny")
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.add_module(self.head_name, nn.Linear(512, num_classes))

    def _make_layer(self, block: type[BasicBlock], planes: int, blocks: int,
                    stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        features = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = getattr(self, self.head_name)(features)
        return (logits, features) if return_features else logits


@register_model
def resnet18(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels)


@register_model
def resnet34(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels)


@register_model
def resnet18_tiny(num_classes: int = 200, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels, stem="tiny")


@register_model
def resnet34_tiny(num_classes: int = 200, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, stem="tiny")


@register_model
def resnet18_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, in_channels, stem="imagenet")


@register_model
def resnet34_imagenet(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, in_channels, stem="imagenet")
