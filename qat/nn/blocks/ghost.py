"""GhostNet blocks (Han et al., 2020): half the features from a conv, half from a cheap depthwise conv."""

from __future__ import annotations

import math

from torch import Tensor, nn

from qat.nn.blocks.common import ActSpec
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Cat
from qat.nn.se import SqueezeExcite

__all__ = ["GhostBottleneck", "GhostModule"]


class GhostModule(nn.Module):
    """``primary`` conv → ``ceil(out/ratio)`` maps, ``cheap`` depthwise conv on them → the rest, concat.

    ``act_layer=None`` gives the linear variant (second ghost module of a bottleneck). The concat
    is a ``qat.nn.Cat``; a channel surplus (odd ``out_channels``) is sliced off, a free int8 op.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        stride: int = 1,
        act_layer: ActSpec | None = "relu",
    ) -> None:
        super().__init__()
        if ratio < 2:
            raise ValueError(f"GhostModule ratio must be >= 2, got {ratio}")
        self.out_channels = out_channels
        init_channels = math.ceil(out_channels / ratio)
        cheap_channels = init_channels * (ratio - 1)
        self.primary = ConvModule2d(
            in_channels, init_channels, kernel_size, stride, kernel_size // 2, norm_layer="bn", act_layer=act_layer
        )
        self.cheap = ConvModule2d(
            init_channels,
            cheap_channels,
            dw_size,
            1,
            dw_size // 2,
            groups=init_channels,
            norm_layer="bn",
            act_layer=act_layer,
        )
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary(x)
        out = self.cat([x1, self.cheap(x1)])
        return out if out.shape[1] == self.out_channels else out[:, : self.out_channels]


class GhostBottleneck(nn.Module):
    """Ghost module (act) → [stride-2 depthwise conv] → [SE] → ghost module (linear) + shortcut.

    The shortcut is the identity when shapes match, else depthwise k×k (stride) + BN → 1×1 + BN.
    SE follows GhostNet: hard-sigmoid gate, squeeze channels ``make_divisible(mid·se_ratio, 4)``.
    ``dw_conv`` forces the middle depthwise conv on or off (default: present iff ``stride > 1``), so
    a down-sampling block can run at stride 1 with unchanged parameters (small-input stems).
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        act_layer: ActSpec | None = "relu",
        dw_conv: bool | None = None,
    ) -> None:
        super().__init__()
        pad = (dw_kernel_size - 1) // 2
        if dw_conv is False and stride > 1:
            raise ValueError("a stride > 1 GhostBottleneck needs its depthwise conv (dw_conv=False given)")
        self.ghost1 = GhostModule(in_channels, mid_channels, act_layer=act_layer)
        self.conv_dw = (
            ConvModule2d(mid_channels, mid_channels, dw_kernel_size, stride, pad, groups=mid_channels, norm_layer="bn")
            if (stride > 1 if dw_conv is None else dw_conv)
            else None
        )
        self.se = (
            SqueezeExcite(mid_channels, rd_ratio=se_ratio, act_layer="relu", gate="hardsigmoid", divisor=4)
            if se_ratio > 0
            else None
        )
        self.ghost2 = GhostModule(mid_channels, out_channels, act_layer=None)
        if in_channels == out_channels and stride == 1:
            self.shortcut = None
        else:
            self.shortcut = nn.Sequential(
                ConvModule2d(
                    in_channels, in_channels, dw_kernel_size, stride, pad, groups=in_channels, norm_layer="bn"
                ),
                ConvModule2d(in_channels, out_channels, 1, norm_layer="bn"),
            )
        self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = self.conv_dw(y)
        if self.se is not None:
            y = self.se(y)
        y = self.ghost2(y)
        return self.add(y, x if self.shortcut is None else self.shortcut(x))
