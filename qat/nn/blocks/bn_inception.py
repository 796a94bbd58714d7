"""BN-Inception's module (Ioffe & Szegedy, ICML 2015, figure 5 / table 1), joined by one int8 concat.

The GoogLeNet module with every 5×5 replaced by two 3×3s and BN after every conv. A stride-2 module
(``stride=2``: the paper's 3c and 4e) has no 1×1 branch and no pool projection and pools by max;
the others pool by average (count padding), except 5b's max pool (``max_pool=True``).
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat

__all__ = ["BNInceptionModule"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> ConvModule2d:
    """Conv (no bias: BN's shift replaces it) → BN → ReLU, "same" padding."""
    return ConvModule2d(
        in_channels, out_channels, kernel_size, stride, kernel_size // 2, norm_layer="bn", act_layer="relu"
    )


class BNInceptionModule(nn.Module):
    """``[1×1] | 1×1 → 3×3 | 1×1 → 3×3 → 3×3 | pool → [1×1]``; channels as the paper's table 1 columns.

    ``ch1x1`` and ``pool_proj`` are 0 in stride-2 modules (no such branch / the pool passes through).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        dbl_red: int,
        dbl: int,
        pool_proj: int,
        stride: int = 1,
        max_pool: bool = False,
    ) -> None:
        super().__init__()
        if stride == 2 and (ch1x1 or pool_proj):
            raise ValueError("a stride-2 BN-Inception module has no 1x1 branch and no pool projection")
        self.branch1x1 = conv_bn_relu(in_channels, ch1x1, 1) if ch1x1 else None
        self.branch3x3 = nn.Sequential(conv_bn_relu(in_channels, ch3x3red, 1), conv_bn_relu(ch3x3red, ch3x3, 3, stride))
        self.branch_double = nn.Sequential(
            conv_bn_relu(in_channels, dbl_red, 1), conv_bn_relu(dbl_red, dbl, 3), conv_bn_relu(dbl, dbl, 3, stride)
        )
        if stride == 2:
            pool: nn.Module = nn.MaxPool2d(3, 2, ceil_mode=True)
        else:
            pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True) if max_pool else nn.AvgPool2d(3, 1, 1, ceil_mode=True)
        self.branch_pool = nn.Sequential(pool, conv_bn_relu(in_channels, pool_proj, 1)) if pool_proj else pool
        self.cat = Cat(dim=1)
        self.out_channels = ch1x1 + ch3x3 + dbl + (pool_proj or in_channels)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch3x3(x), self.branch_double(x), self.branch_pool(x)]
        if self.branch1x1 is not None:
            branches.insert(0, self.branch1x1(x))
        return self.cat(branches)
