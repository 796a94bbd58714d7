"""ShuffleNetV2 unit (Ma et al., 2018) with an int8 concat and a shape-only channel shuffle."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat

__all__ = ["ShuffleV2Block", "channel_shuffle"]


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave ``groups`` channel groups: ``[g0c0, g0c1, .., g1c0, ..] → [g0c0, g1c0, .., g0c1, ..]``.

    Pure view/transpose, so an int8 tensor goes through unchanged (same grid, no rounding).
    """
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channel_shuffle: {c} channels do not split into {groups} groups")
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleV2Block(nn.Module):
    """ShuffleNetV2 unit: channel split (stride 1) or two branches (stride 2), concat, shuffle.

    stride 1: ``x → [x1, x2]``, ``cat(x1, branch2(x2))``; stride > 1: ``cat(branch1(x), branch2(x))``.
    ``branch2`` is 1×1-BN-act → 3×3 dw-BN → 1×1-BN-act; ``branch1`` is 3×3 dw-BN → 1×1-BN-act.
    The concat is a ``qat.nn.Cat`` (one int8 grid for both halves); the shuffle is free.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act_layer: str | type[nn.Module] | nn.Module = "relu",
    ) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"ShuffleV2Block needs an even out_channels, got {out_channels}")
        branch = out_channels // 2
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride 1 splits the input in halves: in_channels ({in_channels}) must be {out_channels}")
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvModule2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, norm_layer="bn"),
                ConvModule2d(in_channels, branch, 1, norm_layer="bn", act_layer=act_layer),
            )
        else:
            self.branch1 = None
        self.branch2 = nn.Sequential(
            ConvModule2d(in_channels if stride > 1 else branch, branch, 1, norm_layer="bn", act_layer=act_layer),
            ConvModule2d(branch, branch, 3, stride, 1, groups=branch, norm_layer="bn"),
            ConvModule2d(branch, branch, 1, norm_layer="bn", act_layer=act_layer),
        )
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = self.cat([x1, self.branch2(x2)])
        else:
            out = self.cat([self.branch1(x), self.branch2(x)])
        return channel_shuffle(out, 2)
