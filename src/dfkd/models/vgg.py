"""VGG-11 with BatchNorm for 32x32 inputs: ``features`` sequence, ``classifier`` head."""

from __future__ import annotations

import torch
from torch import nn

from dfkd.models.registry import register_model

_VGG11 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v),
                           nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


@register_model
def vgg11_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    return VGG(_VGG11, num_classes, in_channels)
