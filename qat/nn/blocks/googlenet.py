"""GoogLeNet's Inception module (Szegedy et al., 2015) in torchvision's layout, with an int8 concat."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat

__all__ = ["BasicConv2d", "Inception"]


class BasicConv2d(ConvModule2d):
    """torchvision's ``BasicConv2d``: conv (no bias) → BN (eps 1e-3) → ReLU, fused in int8."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            norm_layer=nn.BatchNorm2d(out_channels, eps=1e-3),
            act_layer="relu",
        )


class Inception(nn.Module):
    """Four parallel branches joined by one ``qat.nn.Cat`` (one int8 grid for all of them).

    ``branch1`` 1×1; ``branch2`` 1×1 → 3×3; ``branch3`` 1×1 → 3×3 (torchvision keeps 3×3 where the
    paper has 5×5, its issue #906, so its weights load); ``branch4`` 3×3/1 max-pool (ceil mode) →
    1×1. Output channels ``ch1x1 + ch3x3 + ch5x5 + pool_proj``.
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(in_channels, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(BasicConv2d(in_channels, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(in_channels, pool_proj, 1))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)])
