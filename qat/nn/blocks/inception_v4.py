"""Inception v4's modules (Szegedy et al., AAAI 2017) in timm's layout, each joined by an int8 concat.

Attribute names and parameter order equal timm's ``inception_v4`` (``branch0``…, every conv a
:class:`~qat.nn.blocks.googlenet.BasicConv2d`: no bias, BN eps 1e-3, ReLU), so its weights load by
order. Average pools do not count padding, as timm's.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.blocks.googlenet import BasicConv2d
from qat.nn.functional import Cat

__all__ = [
    "InceptionV4A",
    "InceptionV4B",
    "InceptionV4C",
    "Mixed3a",
    "Mixed4a",
    "Mixed5a",
    "ReductionV4A",
    "ReductionV4B",
]


def _pool_proj(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.AvgPool2d(3, 1, 1, count_include_pad=False), BasicConv2d(in_channels, out_channels, 1))


class _Concat(nn.Module):
    """Runs ``branches`` (attribute names, in concat order) on one input and joins them with an int8 ``Cat``."""

    branches: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cat([getattr(self, name)(x) for name in self.branches])


class Mixed3a(_Concat):
    """3×3 s2 max-pool (64) | 3×3 s2 conv (96) → 160 channels; ``stride=1`` for the CIFAR stem."""

    branches = ("maxpool", "conv")

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.maxpool = nn.MaxPool2d(3, stride)
        self.conv = BasicConv2d(64, 96, 3, stride=stride)


class Mixed4a(_Concat):
    """1×1 → 3×3 | 1×1 → 1×7 → 7×1 → 3×3 (all unpadded 3×3s) → 192 channels."""

    branches = ("branch0", "branch1")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(160, 64, 1), BasicConv2d(64, 96, 3))
        self.branch1 = nn.Sequential(
            BasicConv2d(160, 64, 1),
            BasicConv2d(64, 64, (1, 7), padding=(0, 3)),
            BasicConv2d(64, 64, (7, 1), padding=(3, 0)),
            BasicConv2d(64, 96, 3),
        )


class Mixed5a(_Concat):
    """3×3 s2 conv (192) | 3×3 s2 max-pool (192) → 384 channels."""

    branches = ("conv", "maxpool")

    def __init__(self) -> None:
        super().__init__()
        self.conv = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2d(3, 2)


class InceptionV4A(_Concat):
    """35×35 module (384 → 384): 1×1 | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | avg-pool → 1×1."""

    branches = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(
            BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1), BasicConv2d(96, 96, 3, padding=1)
        )
        self.branch3 = _pool_proj(384, 96)


class ReductionV4A(_Concat):
    """35 → 17 (384 → 1024): 3×3 s2 | 1×1 → 3×3 → 3×3 s2 | 3×3 s2 max-pool."""

    branches = ("branch0", "branch1", "branch2")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(
            BasicConv2d(384, 192, 1), BasicConv2d(192, 224, 3, padding=1), BasicConv2d(224, 256, 3, stride=2)
        )
        self.branch2 = nn.MaxPool2d(3, 2)


class InceptionV4B(_Concat):
    """17×17 module (1024 → 1024) with factorised 7×7s."""

    branches = ("branch0", "branch1", "branch2", "branch3")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1024, 384, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 192, (7, 1), padding=(3, 0)),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 224, (7, 1), padding=(3, 0)),
            BasicConv2d(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = _pool_proj(1024, 128)


class ReductionV4B(_Concat):
    """17 → 8 (1024 → 1536): 1×1 → 3×3 s2 | 1×1 → 1×7 → 7×1 → 3×3 s2 | 3×3 s2 max-pool."""

    branches = ("branch0", "branch1", "branch2")

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1024, 192, 1), BasicConv2d(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 256, 1),
            BasicConv2d(256, 256, (1, 7), padding=(0, 3)),
            BasicConv2d(256, 320, (7, 1), padding=(3, 0)),
            BasicConv2d(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2d(3, 2)


class InceptionV4C(nn.Module):
    """8×8 module (1536 → 1536): the 3×3 branches end in a 1×3 and a 3×1 conv side by side (one concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.branch0 = BasicConv2d(1536, 256, 1)
        self.branch1_0 = BasicConv2d(1536, 384, 1)
        self.branch1_1a = BasicConv2d(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = BasicConv2d(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = BasicConv2d(1536, 384, 1)
        self.branch2_1 = BasicConv2d(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = BasicConv2d(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = BasicConv2d(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = BasicConv2d(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = _pool_proj(1536, 256)
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        branches = [
            self.branch0(x),
            self.branch1_1a(b1),
            self.branch1_1b(b1),
            self.branch2_3a(b2),
            self.branch2_3b(b2),
            self.branch3(x),
        ]
        return self.cat(branches)
