"""EfficientNet (B0-B7) building blocks: MBConv with squeeze-excite, SiLU and stochastic depth."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from qat.nn.blocks.common import batch_norm
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Mul
from qat.nn.se import SqueezeExcite, make_divisible

__all__ = ["MBConv", "StochasticDepth"]


class StochasticDepth(nn.Module):
    """Drop a residual branch per sample ("row" mode), as torchvision's ``StochasticDepth``.

    In eval it is the identity, so the int8 model does not contain it. In training each sample
    is kept with probability ``1 - p`` and scaled by ``1/(1 - p)``; the multiply goes through its
    own :class:`qat.nn.Mul`, so a QAT model stays free of unobserved tensor arithmetic.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"StochasticDepth p must be in [0, 1), got {p}")
        self.p = float(p)
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        mask.bernoulli_(keep).div_(keep)
        return self.mul(x, mask)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """EfficientNet MBConv: 1x1 expand → kxk dw → SE → 1x1 linear project (+ stochastic depth + residual).

    Activations are SiLU (``x * sigmoid(x)``, int8 lookup table + int8 multiply). The expand
    conv is skipped at ratio 1; the expanded width is ``make_divisible(in * ratio, 8)`` and SE
    squeezes to ``max(1, int(in * se_ratio))`` channels of the *input* width, as torchvision.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 6.0,
        se_ratio: float = 0.25,
        drop_path: float = 0.0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MBConv stride must be 1 or 2, got {stride}")
        hidden = make_divisible(in_channels * expand_ratio, 8)

        bn = partial(batch_norm, eps=bn_eps, momentum=bn_momentum)

        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvModule2d(in_channels, hidden, 1, norm_layer=bn(hidden), act_layer="silu")
            if hidden != in_channels
            else nn.Identity()
        )
        self.dw = ConvModule2d(
            hidden,
            hidden,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2,
            groups=hidden,
            norm_layer=bn(hidden),
            act_layer="silu",
        )
        self.se = (
            SqueezeExcite(hidden, max(1, int(in_channels * se_ratio)), act_layer="silu", gate="sigmoid")
            if se_ratio > 0
            else nn.Identity()
        )
        self.project = ConvModule2d(hidden, out_channels, 1, norm_layer=bn(out_channels))
        if self.use_residual:
            self.drop_path = StochasticDepth(drop_path) if drop_path > 0 else nn.Identity()
            self.add = Add()

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        if not self.use_residual:
            return y
        return self.add(x, self.drop_path(y))
