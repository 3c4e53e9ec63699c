"""The DCGAN-style generator family of the DFKD literature, sized from the image shape.

Linear(nz -> width*ngf x base^2) -> BN -> ``stages`` x [upsample x2, conv3x3, BN,
LeakyReLU(0.2)] -> conv3x3 to the image channels -> sigmoid, with base = H / 2^stages.
The up-sampling stages output ..., 4 ngf, 2 ngf, ngf channels (the last one ngf).
The official CuDFKD/CMI shapes (their generators, ``datafree/models/generator.py``):

* 32 px: width 4, 2 stages, 8x8 -> 32x32, channels 256 -> 128 -> 64 (ngf 64);
* 64 px (Tiny-ImageNet): width 8, 3 stages, 8x8 -> 64x64, 512 -> 256 -> 128 -> 64.

Weights ~ N(0, 0.02), BN gamma ~ N(1, 0.02). Outputs are images in [0, 1]; methods
normalise them with the dataset's mean and std before the teacher sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from dfkd.errors import ConfigError
from dfkd.ranges import ranged


@dataclass(frozen=True)
class GeneratorConfig:
    """The ``generator:`` section of a run config (validated by :mod:`dfkd.config`)."""

    nz: int | None = ranged(None, ge=1)   # None: the image shape's default size
    ngf: int | None = ranged(None, ge=1)   # channels of the last up-sampling stage
    width: int | None = ranged(None, ge=1)    # channels of the projected input, in units of ngf
    stages: int | None = ranged(None, ge=1)   # up-sampling stages (x2 each)
    lr: float = ranged(1e-3, ge=0)   # Adam learning rate of the generator
    betas: tuple[float, float] = (0.9, 0.99)   # Adam betas of the generator


class GeneratorSize(NamedTuple):
    nz: int       # latent size
    ngf: int      # channels of the last up-sampling stage
    width: int    # channels of the projected input, in units of ngf
    stages: int   # up-sampling stages (x2 each)


def default_generator_size(image_shape: tuple[int, int, int]) -> GeneratorSize:
    """The paper's shapes for 32 px colour and 64 px images; a smaller one for grey images."""
    channels, height, _ = image_shape
    if channels == 1 and height <= 32:
        # MNIST-like: a few M multiply-adds per sample keeps CPUs busy enough. Its 2*ngf
        # input width is the one our Fashion-MNIST recipes were run with.
        return GeneratorSize(128, 16, 2, 2)
    if height >= 64:
        return GeneratorSize(1024, 64, 8, 3)
    return GeneratorSize(512, 64, 4, 2)


def build_generator(config: GeneratorConfig, image_shape: tuple[int, int, int]) -> Generator:
    """A generator of the configured size; each size left unset is the default for the
    image shape (:func:`default_generator_size`)."""
    default = default_generator_size(image_shape)
    return Generator(config.nz or default.nz, config.ngf or default.ngf, image_shape,
                     width=config.width or default.width, stages=config.stages or default.stages)


class Generator(nn.Module):
    def __init__(self, nz: int, ngf: int, image_shape: tuple[int, int, int], width: int = 2,
                 stages: int = 2) -> None:
        super().__init__()
        channels, height, width_px = image_shape
        scale = 2**stages
        if stages < 1 or width < 1 or height % scale or width_px % scale:
            raise ConfigError(f"generator: {stages} up-sampling stages need image sides "
                              f"divisible by {scale}, got {height}x{width_px}; set "
                              "generator.stages (>= 1) and generator.width (>= 1) to fit")
        self.nz, self.ngf = nz, ngf
        self.base = (height // scale, width_px // scale)
        self.in_channels = width * ngf
        self.project = nn.Linear(nz, self.in_channels * self.base[0] * self.base[1])
        layers: list[nn.Module] = [nn.BatchNorm2d(self.in_channels)]
        c_in = self.in_channels
        for stage in range(stages):
            c_out = ngf * 2 ** (stages - 1 - stage)
            layers += [nn.Upsample(scale_factor=2),
                       nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        layers += [nn.Conv2d(ngf, channels, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)
                m.reset_running_stats()

    def input_map(self, z: torch.Tensor) -> torch.Tensor:
        """The projected codes as the body's input map, (N, width*ngf, base, base)."""
        x = self.project(z).view(z.shape[0], self.in_channels, *self.base)
        # channels_last on every device: on CPU, nearest upsampling and oneDNN convolutions
        # are several times faster in this layout than in NCHW (measured).
        return x.contiguous(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_map(z))
