"""Xception (Chollet, 2017) building blocks with every ReLU in int8.

The reference block is pre-activation: ``[ReLU → SeparableConv → BN] × reps (→ max-pool) + skip``.
Inside a block each ReLU follows the previous separable conv's BN, so it is declared as that
pointwise conv's activation (conv+BN+ReLU fuses into one int8 op, same arithmetic). Only the
ReLU that opens a block follows a residual sum whose pre-activation value the skip still needs;
it runs standalone on the int8 tensor (a ReLU keeps its input's grid, so int8 equals fake-quant).
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.blocks.common import ActSpec
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add

__all__ = ["SeparableConvBN", "XceptionBlock"]


class SeparableConvBN(nn.Module):
    """Xception's separable conv: depthwise kxk conv (no BN, no bias) → pointwise 1x1 conv+BN(+act).

    Unlike MobileNet's :class:`~qat.nn.blocks.DepthwiseSeparableConv` there is no BN or activation
    between the two convs, so the depthwise output is its own int8 op feeding the pointwise conv.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        act_layer: ActSpec | None = None,
    ) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=in_channels,
            bias=False,
        )
        self.pw = ConvModule2d(in_channels, out_channels, 1, bias=False, norm_layer="bn", act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class XceptionBlock(nn.Module):
    """``[ReLU] → (SepConv-BN-ReLU) × (reps - 1) → SepConv-BN → [3x3 max-pool, stride] + skip``.

    Same layers and widths as the reference ``Block(in, out, reps, stride, start_with_relu,
    grow_first)``: with ``grow_first`` the first separable conv changes the width, otherwise the
    last. The skip is a strided 1x1 conv+BN when the block changes shape, else the identity; the
    sum is a :class:`qat.nn.Add` (no ReLU after it: the next block starts with its own).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        reps: int,
        stride: int = 1,
        start_with_relu: bool = True,
        grow_first: bool = True,
    ) -> None:
        super().__init__()
        if reps < 1:
            raise ValueError(f"XceptionBlock needs reps >= 1, got {reps}")
        self.skip = (
            ConvModule2d(in_channels, out_channels, 1, stride=stride, bias=False, norm_layer="bn")
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )
        self.act = nn.ReLU() if start_with_relu else nn.Identity()
        widths = [in_channels] + ([out_channels] * reps if grow_first else [in_channels] * (reps - 1) + [out_channels])
        self.convs = nn.Sequential(
            *(
                SeparableConvBN(c_in, c_out, act_layer="relu" if i < reps - 1 else None)
                for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]))
            )
        )
        self.pool = nn.MaxPool2d(3, stride, 1) if stride != 1 else nn.Identity()
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        return self.add(self.pool(self.convs(self.act(x))), self.skip(x))
