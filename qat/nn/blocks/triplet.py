"""Triplet attention (Misra et al., WACV 2021) built from int8-safe parts.

Three gates share one recipe — Z-pool (max and mean over the leading dimension) → k×k conv → BN →
sigmoid → multiply — applied to the tensor rotated so that the pooled dimension is C (spatial
gate), H or W (the two cross-dimension gates); the three results are averaged. int8 form: the max
keeps the input grid (``torch.max`` picks codes), the mean is an ``nn.AdaptiveAvgPool2d`` (rounded
to its own observed grid), the rotations are permutes of int8 tensors, and the joins are
``qat.nn`` Cat/Mul. The three gated tensors share the input's grid, so two int8 adds would land on
exact rounding ties on every other element; the average is one stacked mean instead (an
``nn.AdaptiveAvgPool2d`` over the three, rounded once).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qat.nn.blocks.common import batch_norm
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat, Mul

__all__ = ["AttentionGate", "TripletAttention", "ZPool"]


class ZPool(nn.Module):
    """``[max, mean]`` over dim 1 of ``[N, D, A, B]`` → ``[N, 2, A, B]``."""

    def __init__(self) -> None:
        super().__init__()
        self.mean = nn.AdaptiveAvgPool2d((1, None))
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        peak = torch.max(x, 1, keepdim=True)[0]
        mean = self.mean(x.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()
        return self.cat([peak, mean])


class AttentionGate(nn.Module):
    """``x · sigmoid(BN(conv_k(ZPool(x))))``: one branch of triplet attention (the reference's ``SpatialGate``)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.pool = ZPool()
        self.conv = ConvModule2d(
            2,
            1,
            kernel_size,
            padding=kernel_size // 2,
            bias=False,
            norm_layer=batch_norm(1, momentum=0.01),
            act_layer="sigmoid",
        )
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        return self.mul(x, self.conv(self.pool(x)))


class TripletAttention(nn.Module):
    """Average of the C-H, C-W and H-W gates (``gate_h``, ``gate_w``, ``gate_spatial``); no channel count needed."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.gate_h = AttentionGate(kernel_size)
        self.gate_w = AttentionGate(kernel_size)
        self.gate_spatial = AttentionGate(kernel_size)
        self.stack = Cat(dim=2)
        self.mean = nn.AdaptiveAvgPool2d((1, None))

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        ch = self.gate_h(x.permute(0, 2, 1, 3).contiguous()).permute(0, 2, 1, 3)
        cw = self.gate_w(x.permute(0, 3, 2, 1).contiguous()).permute(0, 3, 2, 1)
        gated = [self.gate_spatial(x), ch, cw]
        return self.mean(self.stack([g.reshape(n, c, 1, h * w) for g in gated])).reshape(n, c, h, w)
