"""ResNeSt (Zhang et al., 2020) split-attention blocks, every op in int8.

:class:`SplitAttention` decomposes the reference's tensor arithmetic into ``qat.nn`` ops:

- the ``radix`` splits are channel chunks of one grouped conv's output (views, no rounding);
- their sum is a chain of :class:`qat.nn.Add`, then a global average pool;
- the radix softmax is :class:`qat.nn.Softmax` (torch's int8 softmax, fixed 1/256 grid) over the
  radix axis of the reshaped ``[B, radix, cardinality, C/cardinality]`` attention logits;
- the attention-weighted sum is one :class:`qat.nn.Mul` per split and a chain of ``Add``.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.activations import Softmax
from qat.nn.blocks.resnet import shortcut
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, AddReLU, Mul
from qat.nn.se import make_divisible

__all__ = ["ResNeStBottleneck", "SplitAttention"]


class SplitAttention(nn.Module):
    """Split-attention conv ("Splat"): kxk conv (groups ``cardinality·radix``)-BN-ReLU → radix attention.

    ``y = Σ_r softmax_r(fc2(relu(bn(fc1(pool(Σ_r x_r)))))) · x_r`` over the ``radix`` channel
    chunks ``x_r`` of the conv output. The attention width is ``make_divisible(in · radix · rd_ratio,
    8)``, at least 32, as the reference. ``fc1`` keeps its bias in front of its BN (the reference
    does; torch's conv+BN fusion folds it), so the parameter count matches.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        radix: int = 2,
        cardinality: int = 1,
        rd_ratio: float = 0.25,
        rd_divisor: int = 8,
        min_rd_channels: int = 32,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if radix < 2:
            raise ValueError(f"SplitAttention needs radix >= 2 (radix 1 is a plain grouped conv), got {radix}")
        if out_channels % cardinality:
            raise ValueError(f"out_channels ({out_channels}) must divide into cardinality ({cardinality}) groups")
        self.radix, self.cardinality, self.out_channels = radix, cardinality, out_channels
        attn_channels = make_divisible(in_channels * radix * rd_ratio, rd_divisor, min_rd_channels)
        self.conv = ConvModule2d(
            in_channels,
            out_channels * radix,
            kernel_size,
            stride=stride,
            padding=(kernel_size - 1) // 2 * dilation,
            dilation=dilation,
            groups=cardinality * radix,
            bias=False,
            norm_layer="bn",
            act_layer="relu",
        )
        self.split_adds = nn.ModuleList(Add() for _ in range(radix - 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(out_channels, attn_channels, 1, groups=cardinality)
        self.bn1 = nn.BatchNorm2d(attn_channels)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Conv2d(attn_channels, out_channels * radix, 1, groups=cardinality)
        self.softmax = Softmax(dim=1)
        self.muls = nn.ModuleList(Mul() for _ in range(radix))
        self.out_adds = nn.ModuleList(Add() for _ in range(radix - 1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        splits = x.chunk(self.radix, dim=1)
        gap = splits[0]
        for add, split in zip(self.split_adds, splits[1:]):
            gap = add(gap, split)
        logits = self.fc2(self.act1(self.bn1(self.fc1(self.pool(gap)))))  # [B, R·C, 1, 1], cardinal-major
        b = logits.shape[0]
        logits = logits.reshape(b, self.cardinality, self.radix, -1).transpose(1, 2).contiguous()
        attn = self.softmax(logits).reshape(b, self.radix * self.out_channels, 1, 1)  # radix-major, as splits
        weights = attn.chunk(self.radix, dim=1)
        out = self.muls[0](splits[0], weights[0])
        for mul, add, split, weight in zip(self.muls[1:], self.out_adds, splits[1:], weights[1:]):
            out = add(out, mul(split, weight))
        return out

    def fuse_patterns(self) -> list[list[str]]:
        return [["fc1", "bn1", "act1"]]

    def extra_repr(self) -> str:
        return f"radix={self.radix}, cardinality={self.cardinality}"


class ResNeStBottleneck(nn.Module):
    """ResNeSt bottleneck: 1x1-BN-ReLU → split-attention 3x3 → [avd] → 1x1-BN, + shortcut, ReLU.

    ``avd`` (stride-2 blocks only): the split-attention conv runs at stride 1 and a 3x3 stride-2
    average pool down-samples after it (``avd_first``: before it). ``avg_down`` shortcut: 2x2
    stride-2 average pool (ceil mode, padding not counted) then 1x1 conv+BN ("ResNet-D"); else a
    strided 1x1 conv+BN. The sum and the final ReLU are one :class:`qat.nn.AddReLU`.
    """

    expansion = 4

    def __init__(
        self,
        in_channels: int,
        planes: int,
        stride: int = 1,
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        avd: bool = True,
        avd_first: bool = False,
        avg_down: bool = True,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * cardinality
        out_channels = planes * self.expansion
        avd_stride = stride if avd and stride > 1 else 0
        self.conv1 = ConvModule2d(in_channels, width, 1, bias=False, norm_layer="bn", act_layer="relu")
        self.avd_first = nn.AvgPool2d(3, avd_stride, 1) if avd_stride and avd_first else nn.Identity()
        self.conv2 = SplitAttention(
            width, width, 3, stride=1 if avd_stride else stride, radix=radix, cardinality=cardinality
        )
        self.avd_last = nn.AvgPool2d(3, avd_stride, 1) if avd_stride and not avd_first else nn.Identity()
        self.conv3 = ConvModule2d(width, out_channels, 1, bias=False, norm_layer="bn")
        self.downsample = shortcut(in_channels, out_channels, stride, avg_down)
        self.add_relu = AddReLU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv3(self.avd_last(self.conv2(self.avd_first(self.conv1(x)))))
        return self.add_relu(y, self.downsample(x))
