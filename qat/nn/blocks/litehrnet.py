"""Lite-HRNet blocks (Yu et al., 2021): conditional channel weighting across parallel resolutions.

Differences from the mmpose reference, all for int8/ONNX export: cross-resolution pooling is a
fixed-kernel average pool (``kernel = stride = H_i / H_min``, read from the input shapes) instead
of adaptive pooling; every ``+``, ``*`` and ``cat`` is a ``qat.nn`` module (one per call site);
upsampling is ``qat.nn.Interpolate`` (nearest in the weighting and fuse layers, bilinear in the
iterative head, as in the reference).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from qat.nn.blocks.shufflenet import channel_shuffle
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, AddReLU, Cat, Mul
from qat.nn.misc import Interpolate
from qat.nn.se import SqueezeExcite
from qat.quant.int8_ops import Int8Policy

__all__ = [
    "ConditionalChannelWeighting",
    "CrossResolutionWeighting",
    "IterativeHead",
    "LiteHRModule",
    "LiteHRStem",
    "SpatialWeighting",
]


class _AvgPoolTo(nn.Module):
    """Average-pool to a size given at call time, as a fixed ``kernel = stride = H / h`` pool.

    The kernel comes from the input shapes, so an exported graph holds a plain AvgPool (ONNX has
    no general adaptive pooling); a non-integral ratio falls back to adaptive pooling. In int8 the
    window sum is rounded once to the module's own observed grid (``requant``), as in fake-quant.
    """

    int8_policy = Int8Policy("requant")

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        h, w = x.shape[-2:]
        if h % size[0] or w % size[1]:
            return F.adaptive_avg_pool2d(x, size)
        kernel = (h // size[0], w // size[1])
        return F.avg_pool2d(x, kernel, kernel)


class SpatialWeighting(SqueezeExcite):
    """Lite-HRNet's per-branch weighting: global pool → 1×1 (C/ratio) ReLU → 1×1 sigmoid → ``x · w``."""

    def __init__(self, channels: int, ratio: int = 4) -> None:
        super().__init__(channels, squeeze_channels=int(channels / ratio), act_layer="relu", gate="sigmoid")


class CrossResolutionWeighting(nn.Module):
    """Channel weights computed jointly from all branches, each branch multiplied by its own share.

    Every branch is pooled to the smallest one's resolution, concatenated (``qat.nn.Cat``), mixed by
    1×1-BN-ReLU → 1×1-BN-sigmoid, split back per branch, upsampled (nearest) and multiplied in.
    """

    def __init__(self, channels: Sequence[int], ratio: int = 16) -> None:
        super().__init__()
        self.channels = list(channels)
        total = sum(self.channels)
        self.pools = nn.ModuleList(_AvgPoolTo() for _ in self.channels[:-1])
        self.cat = Cat(dim=1)
        self.conv1 = ConvModule2d(total, int(total / ratio), 1, norm_layer="bn", act_layer="relu")
        self.conv2 = ConvModule2d(int(total / ratio), total, 1, norm_layer="bn", act_layer="sigmoid")
        # nearest resize to each branch's own size (given at call time); exact in int8
        self.upsample = nn.ModuleList(Interpolate(scale_factor=1.0, mode="nearest") for _ in self.channels[:-1])
        self.muls = nn.ModuleList(Mul() for _ in self.channels)

    def forward(self, x: Sequence[Tensor]) -> list[Tensor]:
        if len(x) != len(self.channels):
            raise ValueError(f"CrossResolutionWeighting built for {len(self.channels)} branches, got {len(x)}")
        smallest = tuple(x[-1].shape[-2:])
        pooled = [pool(s, smallest) for pool, s in zip(self.pools, x[:-1])] + [x[-1]]
        weights = self.conv2(self.conv1(self.cat(pooled))).split(self.channels, dim=1)
        out = []
        for i, (s, a) in enumerate(zip(x, weights)):
            if i < len(self.upsample):
                a = self.upsample[i](a, size=tuple(s.shape[-2:]))
            out.append(self.muls[i](s, a))
        return out


class ConditionalChannelWeighting(nn.Module):
    """Lite-HRNet's shuffle block for all branches at once (replaces ShuffleNet's 1×1 convs).

    Each branch is split in halves; the second halves go through cross-resolution weighting, a
    3×3 depthwise conv-BN and spatial weighting; halves are concatenated and channel-shuffled.
    """

    def __init__(self, in_channels: Sequence[int], stride: int = 1, reduce_ratio: int = 8) -> None:
        super().__init__()
        if any(c % 2 for c in in_channels):
            raise ValueError(f"ConditionalChannelWeighting splits channels in halves; got {list(in_channels)}")
        branch = [c // 2 for c in in_channels]
        self.cross_resolution_weighting = CrossResolutionWeighting(branch, ratio=reduce_ratio)
        self.depthwise_convs = nn.ModuleList(
            ConvModule2d(c, c, 3, stride, 1, groups=c, norm_layer="bn") for c in branch
        )
        self.spatial_weighting = nn.ModuleList(SpatialWeighting(c, ratio=4) for c in branch)
        self.cats = nn.ModuleList(Cat(dim=1) for _ in branch)

    def forward(self, x: Sequence[Tensor]) -> list[Tensor]:
        halves = [s.chunk(2, dim=1) for s in x]
        x2 = self.cross_resolution_weighting([h[1] for h in halves])
        x2 = [sw(dw(s)) for s, dw, sw in zip(x2, self.depthwise_convs, self.spatial_weighting)]
        return [channel_shuffle(cat([h[0], s]), 2) for h, s, cat in zip(halves, x2, self.cats)]


class LiteHRStem(nn.Module):
    """3×3 conv-BN-ReLU (stride), then a ShuffleNet-style two-branch unit (stride) with shuffle.

    ``stride=1`` for both convs is the small-input (CIFAR) stem; the reference uses 2 and 2 (1/4).
    """

    def __init__(
        self,
        in_channels: int = 3,
        stem_channels: int = 32,
        out_channels: int = 32,
        expand_ratio: float = 1.0,
        conv_stride: int = 2,
        branch_stride: int = 2,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        mid = int(round(stem_channels * expand_ratio))
        branch = stem_channels // 2
        inc = out_channels - branch if stem_channels == out_channels else out_channels - stem_channels
        self.conv1 = ConvModule2d(in_channels, stem_channels, 3, conv_stride, 1, norm_layer="bn", act_layer="relu")
        self.branch1 = nn.Sequential(
            ConvModule2d(branch, branch, 3, branch_stride, 1, groups=branch, norm_layer="bn"),
            ConvModule2d(branch, inc, 1, norm_layer="bn", act_layer="relu"),
        )
        self.expand_conv = ConvModule2d(branch, mid, 1, norm_layer="bn", act_layer="relu")
        self.depthwise_conv = ConvModule2d(mid, mid, 3, branch_stride, 1, groups=mid, norm_layer="bn")
        linear_out = branch if stem_channels == out_channels else stem_channels
        self.linear_conv = ConvModule2d(mid, linear_out, 1, norm_layer="bn", act_layer="relu")
        self.cat = Cat(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.conv1(x).chunk(2, dim=1)
        x2 = self.linear_conv(self.depthwise_conv(self.expand_conv(x2)))
        return channel_shuffle(self.cat([self.branch1(x1), x2]), 2)


def _dw_pw(in_channels: int, out_channels: int, stride: int, relu: bool) -> nn.Sequential:
    """3×3 depthwise-BN (stride) → 1×1-BN[-ReLU], the down-sampling unit of Lite-HRNet's fuse layers."""
    return nn.Sequential(
        ConvModule2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, norm_layer="bn"),
        ConvModule2d(in_channels, out_channels, 1, norm_layer="bn", act_layer="relu" if relu else None),
    )


class LiteHRModule(nn.Module):
    """``num_blocks`` conditional channel weighting blocks, then HRNet fusion across branches.

    Output ``i`` sums every branch brought to resolution ``i`` (1×1-BN + nearest upsampling from
    lower resolutions; chains of stride-2 depthwise-separable convs from higher ones), ReLU last.
    The sums are ``qat.nn.Add`` modules and the last one an ``AddReLU`` (one int8 op, exact).
    Each branch counts once, as in HRNet: the mmpose code starts the sum from branch 0 and adds it
    again, in place, so branch 0 counts twice and outputs ``i > 0`` see the already fused map.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_blocks: int = 2,
        reduce_ratio: int = 8,
        multiscale_output: bool = True,
        with_fuse: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels = list(in_channels)
        n = len(self.in_channels)
        self.layers = nn.Sequential(
            *(ConditionalChannelWeighting(self.in_channels, reduce_ratio=reduce_ratio) for _ in range(num_blocks))
        )
        self.with_fuse = with_fuse and n > 1
        self.multiscale_output = multiscale_output
        if not self.with_fuse:
            return
        num_out = n if multiscale_output else 1
        self.fuse_layers = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        self.adds = nn.ModuleList()
        for i in range(num_out):
            row, ups = nn.ModuleList(), nn.ModuleDict()
            for j in range(n):
                if j > i:
                    row.append(ConvModule2d(self.in_channels[j], self.in_channels[i], 1, norm_layer="bn"))
                    ups[str(j)] = Interpolate(scale_factor=float(2 ** (j - i)), mode="nearest")
                elif j == i:
                    row.append(nn.Identity())
                else:
                    steps = [_dw_pw(self.in_channels[j], self.in_channels[j], 2, True) for _ in range(i - j - 1)]
                    steps.append(_dw_pw(self.in_channels[j], self.in_channels[i], 2, False))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
            self.upsamples.append(ups)
            self.adds.append(nn.ModuleList([*(Add() for _ in range(n - 2)), AddReLU()]))

    def forward(self, x: Sequence[Tensor]) -> list[Tensor]:
        if len(x) != len(self.in_channels):
            raise ValueError(f"LiteHRModule built for {len(self.in_channels)} branches, got {len(x)}")
        out = self.layers(list(x))
        if not self.with_fuse:
            return out if self.multiscale_output else [out[0]]
        fused = []
        for i, (row, ups, adds) in enumerate(zip(self.fuse_layers, self.upsamples, self.adds)):
            size = tuple(out[i].shape[-2:])
            terms = []
            for j, layer in enumerate(row):
                t = layer(out[j])
                if j > i:
                    t = ups[str(j)](t, size=size)
                terms.append(t)
            y = terms[0]
            for add, t in zip(adds, terms[1:]):
                y = add(y, t)
            fused.append(y)
        return fused


class IterativeHead(nn.Module):
    """Lite-HRNet's top-down refinement: from the lowest resolution up, upsample, add to the next
    branch, then a depthwise-separable conv (dw-BN → 1×1-BN-ReLU).

    ``upsample_mode`` is the reference's ``"bilinear"`` (aligned corners) by default; in int8 it
    rounds once to its own observed grid, as fake-quant does. ``"nearest"`` keeps the input grid.

    As in the reference each projection maps branch ``i`` to branch ``i-1``'s width, so output ``i``
    has ``in_channels[i-1]`` channels (output 0 keeps ``in_channels[0]``).
    """

    def __init__(self, in_channels: Sequence[int], upsample_mode: str = "bilinear") -> None:
        super().__init__()
        rev = list(in_channels)[::-1]
        align = True if upsample_mode == "bilinear" else None
        self.projects = nn.ModuleList(
            _dw_pw(rev[i], rev[i + 1] if i < len(rev) - 1 else rev[i], 1, True) for i in range(len(rev))
        )
        self.upsamples = nn.ModuleList(
            Interpolate(scale_factor=2.0, mode=upsample_mode, align_corners=align) for _ in rev[1:]
        )
        self.adds = nn.ModuleList(Add() for _ in rev[1:])

    def forward(self, x: Sequence[Tensor]) -> list[Tensor]:
        y: list[Tensor] = []
        last = None
        for i, s in enumerate(list(x)[::-1]):
            if last is not None:
                s = self.adds[i - 1](s, self.upsamples[i - 1](last, size=tuple(s.shape[-2:])))
            last = self.projects[i](s)
            y.append(last)
        return y[::-1]
