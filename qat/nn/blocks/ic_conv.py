"""Inception convolution (IC-Conv; Liu et al., CVPR 2021): a 3×3 conv whose output channels use
different dilations, independently along H and W.

The searched per-layer patterns of the paper are not published with the models used here, so
:data:`FIXED_PATTERN` is a fixed one: four equal channel groups with dilations (1, 1), (1, 2),
(2, 1) and (2, 2). Each group is its own conv + BN + ReLU (per-channel BN splits exactly, so the
parameter count equals one 3×3 conv + BN) and one int8 ``Cat`` joins them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat

__all__ = ["FIXED_PATTERN", "InceptionConv2d"]

#: (dilation along H, dilation along W) per channel group.
FIXED_PATTERN: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2))


class InceptionConv2d(nn.Module):
    """3×3 conv + BN + ReLU with one dilation pair per equal share of the output channels (``pattern``)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, pattern: Sequence[tuple[int, int]] = FIXED_PATTERN
    ) -> None:
        super().__init__()
        if out_channels % len(pattern):
            raise ValueError(f"{out_channels} output channels do not split into {len(pattern)} dilation groups")
        share = out_channels // len(pattern)
        self.pattern = tuple(tuple(d) for d in pattern)
        self.branches = nn.ModuleList(
            ConvModule2d(
                in_channels,
                share,
                3,
                stride,
                (dh, dw),
                dilation=(dh, dw),
                bias=False,
                norm_layer="bn",
                act_layer="relu",
            )
            for dh, dw in self.pattern
        )
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.cat([branch(x) for branch in self.branches])

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}"
