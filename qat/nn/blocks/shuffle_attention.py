"""Shuffle attention (SA-Net; Zhang & Yang, ICASSP 2021) built from int8-safe parts.

The channels are cut into ``groups`` sub-features and each is halved: one half is gated by its
global average (channel attention), the other by its own instance-normalised value (spatial
attention), each through a per-channel affine and a sigmoid; the halves are concatenated and the
channels shuffled (2 groups). int8 form: the per-channel affines (the reference's
``cweight``/``cbias`` and ``sweight``/``sbias``, same parameter counts) are depthwise 1×1 convs,
the instance norm (the reference's ``GroupNorm(C', C')``) is rounded once to its own observed grid
(``requant``, as ``nn.LayerNorm``), the gates are fixed-grid sigmoid tables and the products
``qat.nn.Mul``.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.blocks.shufflenet import channel_shuffle
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat, Mul
from qat.quant.int8_ops import Int8Policy

__all__ = ["ShuffleAttention"]


class _InstanceNorm(nn.GroupNorm):
    """``GroupNorm(C, C)`` (per-channel instance norm with affine); int8: one rounding to its observed grid."""

    int8_policy = Int8Policy("requant")

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels)


def _affine_gate(channels: int) -> ConvModule2d:
    """``sigmoid(w · x + b)`` per channel, initialised as the reference: ``w = 0``, ``b = 1``."""
    gate = ConvModule2d(channels, channels, 1, groups=channels, act_layer="sigmoid")
    nn.init.zeros_(gate.conv.weight)
    nn.init.ones_(gate.conv.bias)
    return gate


class ShuffleAttention(nn.Module):
    """SA over ``channels`` split into ``groups`` sub-features (``channels`` divisible by ``2·groups``)."""

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        if channels % (2 * groups):
            raise ValueError(f"ShuffleAttention: {channels} channels do not split into {groups} pairs of halves")
        half = channels // (2 * groups)
        self.groups = groups
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.channel_gate = _affine_gate(half)
        self.norm = _InstanceNorm(half)
        self.spatial_gate = _affine_gate(half)
        self.mul_channel = Mul()
        self.mul_spatial = Mul()
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x0, x1 = x.reshape(b * self.groups, c // self.groups, h, w).chunk(2, dim=1)
        x0, x1 = x0.contiguous(), x1.contiguous()
        xn = self.mul_channel(x0, self.channel_gate(self.pool(x0)))
        xs = self.mul_spatial(x1, self.spatial_gate(self.norm(x1)))
        return channel_shuffle(self.cat([xn, xs]).reshape(b, c, h, w), 2)
