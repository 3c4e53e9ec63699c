"""The DCGAN-style generator family of the DFKD literature, sized from the image shape.

Linear(nz -> 2 ngf (H/4)^2) -> BN -> [upsample x2, conv3x3, BN, LeakyReLU(0.2)] x 2
-> conv3x3 to the image channels -> sigmoid. Weights ~ N(0, 0.02), BN gamma ~
N(1, 0.02), as in SPEC.md. Outputs are images in [0, 1]; methods normalise them
with the dataset's mean and std before the teacher sees them.
"""

from __future__ import annotations

import torch
from torch import nn


def default_generator_size(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(nz, ngf): the paper's 512/64 at 32 px colour, 1024/64 at 64 px, smaller for grey."""
    channels, height, _ = image_shape
    if channels == 1 and height <= 32:
        return 128, 16  # MNIST-like: a few M multiply-adds per sample keeps CPUs busy enough
    return (1024, 64) if height >= 64 else (512, 64)


class Generator(nn.Module):
    def __init__(self, nz: int, ngf: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ValueError(f"generator needs image sides divisible by 4, got {height}x{width}")
        self.nz, self.ngf = nz, ngf
        self.base = (height // 4, width // 4)
        self.project = nn.Linear(nz, 2 * ngf * self.base[0] * self.base[1])
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * ngf, ngf, 3, padding=1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, channels, 3, padding=1),
            nn.Sigmoid(),
        )
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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(z.shape[0], 2 * self.ngf, *self.base)
        # channels_last on every device: on CPU, nearest upsampling and oneDNN convolutions
        # are several times faster in this layout than in NCHW (measured; see BENCHMARKS.md).
        return self.body(x.contiguous(memory_format=torch.channels_last))
