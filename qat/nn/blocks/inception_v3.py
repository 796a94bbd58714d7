"""Inception v3's modules (Szegedy et al., CVPR 2016) in torchvision's layout, each joined by an int8 concat.

Attribute names equal torchvision's ``InceptionA``-``InceptionE`` (every conv a
:class:`~qat.nn.blocks.googlenet.BasicConv2d`: no bias, BN eps 1e-3, ReLU), so its state dict
loads after the ``bn`` → ``norm`` rename. The average pools torchvision calls functionally are
modules here (``avgpool``/``maxpool``, no parameters) so they get their own int8 grid.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.blocks.googlenet import BasicConv2d
from qat.nn.functional import Cat

__all__ = ["InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE"]


def _avg_pool() -> nn.AvgPool2d:
    """torchvision's ``F.avg_pool2d(x, 3, 1, 1)`` (padding counted)."""
    return nn.AvgPool2d(3, 1, 1)


class InceptionA(nn.Module):
    """35×35 module: 1×1 | 1×1 → 5×5 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1 (``pool_features``)."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.avgpool = _avg_pool()
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)
        self.cat = Cat(dim=1)
        self.out_channels = 224 + pool_features

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return self.cat([self.branch1x1(x), b5, b3, self.branch_pool(self.avgpool(x))])


class InceptionB(nn.Module):
    """35 → 17 reduction: 3×3 s2 | 1×1 → 3×3 → 3×3 s2 | 3×3 s2 max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2)
        self.cat = Cat(dim=1)
        self.out_channels = 480 + in_channels

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return self.cat([self.branch3x3(x), b3, self.maxpool(x)])


class InceptionC(nn.Module):
    """17×17 module with factorised 7×7s: 1×1 | 1×1 → 1×7 → 7×1 | 1×1 → (7×1 → 1×7)×2 | avg-pool → 1×1."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.avgpool = _avg_pool()
        self.branch_pool = BasicConv2d(in_channels, 192, 1)
        self.cat = Cat(dim=1)
        self.out_channels = 768

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = conv(d)
        return self.cat([self.branch1x1(x), b7, d, self.branch_pool(self.avgpool(x))])


class InceptionD(nn.Module):
    """17 → 8 reduction: 1×1 → 3×3 s2 | 1×1 → 1×7 → 7×1 → 3×3 s2 | 3×3 s2 max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2)
        self.cat = Cat(dim=1)
        self.out_channels = 512 + in_channels

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return self.cat([b3, b7, self.maxpool(x)])


class InceptionE(nn.Module):
    """8×8 module with expanded filter banks: each 3×3 branch ends in a 1×3 and a 3×1 conv side by side."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.avgpool = _avg_pool()
        self.branch_pool = BasicConv2d(in_channels, 192, 1)
        self.cat = Cat(dim=1)
        self.out_channels = 2048

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(b3),
            self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d),
            self.branch3x3dbl_3b(d),
            self.branch_pool(self.avgpool(x)),
        ]
        return self.cat(branches)
