"""VGG-11 with BatchNorm in the layout of the common CIFAR model zoo (RepDistiller's
``models/vgg.py``, copied as ``datafree/models/classifiers/vgg.py`` by the CMI and CuDFKD
benchmarks), so that their ``vgg11`` teacher checkpoints load as they are.

Five ``block0..4`` sequences of conv3x3 (with bias) -> BN -> ReLU, each without its
last ReLU, which ``forward`` applies; max-pools ``pool0..3`` after blocks 0-2 (and 3
only for 64x64 inputs), then adaptive average pooling ``pool4`` and a ``classifier``
Linear(512, K). A 32x32 input thus reaches ``block4`` at 4x4, as does a 64x64 one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.models.registry import register_model

_VGG11 = [[64], [128], [256, 256], [512, 512], [512, 512]]


def _block(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the zoo drops each block's last ReLU


class VGG(nn.Module):
    def __init__(self, cfg: list[list[int]], num_classes: int, in_channels: int) -> None:
        super().__init__()
        widths_in = [in_channels] + [widths[-1] for widths in cfg[:-1]]
        self.block0 = _block(cfg[0], widths_in[0])
        self.block1 = _block(cfg[1], widths_in[1])
        self.block2 = _block(cfg[2], widths_in[2])
        self.block3 = _block(cfg[3], widths_in[3])
        self.block4 = _block(cfg[4], widths_in[4])
        self.pool0 = nn.MaxPool2d(2)
        self.pool1 = nn.MaxPool2d(2)
        self.pool2 = nn.MaxPool2d(2)
        self.pool3 = nn.MaxPool2d(2)
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        # The zoo's initialisation (He-normal convs, N(0, 0.01) head), for students.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        side = x.shape[2]
        out = self.pool0(F.relu(self.block0(x)))
        out = self.pool1(F.relu(self.block1(out)))
        out = self.pool2(F.relu(self.block2(out)))
        out = F.relu(self.block3(out))
        if side == 64:  # the zoo pools here only for 64x64 inputs (Tiny-ImageNet)
            out = self.pool3(out)
        out = F.relu(self.block4(out))
        features = self.pool4(out).flatten(1)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


@register_model
def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(_VGG11, num_classes, in_channels)
