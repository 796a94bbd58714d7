"""MobileNeXt sandglass block (Zhou et al., 2020): depthwise convs at the wide ends, a thin 1×1 middle."""

from __future__ import annotations

import math

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Cat
from qat.nn.se import make_divisible

__all__ = ["SandGlass"]


class SandGlass(nn.Module):
    """[3×3 dw-BN-act] → 1×1 reduce-BN (linear) → 1×1 expand-BN-act → [3×3 dw-BN (stride)] (+ residual).

    Hidden width is ``in_channels // reduction_ratio``, raised to ``make_divisible(ceil(out/6), 16)``
    when thinner than ``out/6`` (the reference rule). The reference network drops ``dw_in``/``dw_out``
    in some transition blocks, so both are switches; ``stride`` lives in the last depthwise conv.
    A residual is added when shapes allow it (stride 1, equal channels) unless ``residual=False``.
    ``identity_ratio < 1`` adds the residual to the first ``round(in·ratio)`` channels only (the
    paper's identity tensor multiplier); the rest passes through a ``qat.nn.Cat``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        reduction_ratio: int = 6,
        dw_in: bool = True,
        dw_out: bool = True,
        residual: bool | None = None,
        identity_ratio: float = 1.0,
        act_layer: str | type[nn.Module] | nn.Module = "relu6",
    ) -> None:
        super().__init__()
        if stride > 1 and not dw_out:
            raise ValueError("SandGlass strides in its last depthwise conv: stride > 1 needs dw_out=True")
        if not 0.0 < identity_ratio <= 1.0:
            raise ValueError(f"identity_ratio must be in (0, 1], got {identity_ratio}")
        hidden = in_channels // reduction_ratio
        if hidden < out_channels / 6.0:
            hidden = make_divisible(math.ceil(out_channels / 6.0), 16)
        can_add = stride == 1 and in_channels == out_channels
        if residual and not can_add:
            raise ValueError("a residual needs stride 1 and in_channels == out_channels")
        self.residual = can_add if residual is None else residual
        self.dw_in = (
            ConvModule2d(in_channels, in_channels, 3, 1, 1, groups=in_channels, norm_layer="bn", act_layer=act_layer)
            if dw_in
            else None
        )
        self.reduce = ConvModule2d(in_channels, hidden, 1, norm_layer="bn")
        self.expand = ConvModule2d(hidden, out_channels, 1, norm_layer="bn", act_layer=act_layer)
        self.dw_out = (
            ConvModule2d(out_channels, out_channels, 3, stride, 1, groups=out_channels, norm_layer="bn")
            if dw_out
            else None
        )
        self.identity_channels = round(in_channels * identity_ratio) if self.residual else 0
        self.add = Add() if self.residual else None
        self.cat = Cat(dim=1) if self.residual and self.identity_channels < out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        out = x if self.dw_in is None else self.dw_in(x)
        out = self.expand(self.reduce(out))
        if self.dw_out is not None:
            out = self.dw_out(out)
        if self.add is None:
            return out
        if self.cat is None:
            return self.add(out, x)
        k = self.identity_channels
        return self.cat([self.add(out[:, :k], x[:, :k]), out[:, k:]])
