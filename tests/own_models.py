"""A user's own models, outside dfkd's zoo, for tests/test_any_model.py and the benchmarks
(benchmarks/own_pair_models.py takes them from here): dfkd loads them by file spec
(``tests/own_models.py:make_teacher``), as it loads any user's models."""

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


# Models without BatchNorm.
def make_groupnorm_teacher(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A CNN with GroupNorm instead of BatchNorm: 32 -> 16 -> 8 -> global average, ~60K
    parameters. It stores no running statistics, so no BN prior can be read from it."""
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(4, c_out),
                nn.ReLU(inplace=True)]

    return nn.Sequential(
        *block(in_channels, 16), *block(16, 32), nn.MaxPool2d(2),
        *block(32, 48), nn.MaxPool2d(2), *block(48, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))


class _ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 conv, LayerNorm over channels (channels-last), MLP x4, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        y = self.dw(x).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)


class _ChannelsLN(nn.Module):
    """LayerNorm over the channels of an NCHW map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtLN(nn.Module):
    """A small ConvNeXt-style net, LayerNorm only: a 2x2 patchify stem (32 -> 16), two
    stages (16 and 8 px) joined by an LN + 2x2 strided conv, then LN and a linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dims=(24, 48)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 2, stride=2),
                                  _ChannelsLN(dims[0]))
        self.stage1 = nn.Sequential(_ConvNeXtBlock(dims[0]), _ConvNeXtBlock(dims[0]))
        self.down = nn.Sequential(_ChannelsLN(dims[0]),
                                  nn.Conv2d(dims[0], dims[1], 2, stride=2))
        self.stage2 = nn.Sequential(_ConvNeXtBlock(dims[1]), _ConvNeXtBlock(dims[1]))
        self.norm = nn.LayerNorm(dims[1])
        self.head = nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(x.mean(dim=(2, 3))))


def make_convnext_ln(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return ConvNeXtLN(num_classes, in_channels)


def make_plain_student(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A student with no normalisation layer at all: 32 -> 16 -> 8, ~20K parameters."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(32, 48, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(48, num_classes))
