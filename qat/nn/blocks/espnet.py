"""ESPNet blocks: ESPNetv2's EESP unit and its strided down-sampler (Mehta et al., CVPR 2019), and
ESPNet v1's ESP module (Mehta et al., ECCV 2018).

EESP layouts follow the authors' code (``sacmehta/EdgeNets``, ``nn_layers/eesp.py``): submodules are
registered in the same order, so a reference state dict loads by position (minus the reference's
never-called layers, see :class:`EESPDownsampler`). Every ``+`` and ``cat`` is a ``qat.nn``
module (one per call site); activations are per-channel ``nn.PReLU`` (an exact int8 lookup op per channel, see
``qat.quant.int8_ops``).
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Cat

__all__ = ["BNPReLU", "EESP", "ESP", "EESPDownsampler", "eesp_dilations"]

#: Dilation rates of the ESP module's five 3×3 branches (ESPNet v1).
ESP_DILATIONS = (1, 2, 4, 8, 16)


def eesp_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Dilation rates of the ``branches`` 3×3 depthwise convs, in ascending order.

    Branch ``i`` wants an effective kernel of ``3 + 2i`` (dilation ``i + 1``); past
    ``receptive_limit`` it falls back to a plain 3×3 (dilation 1), as the reference does.
    """
    sizes = sorted(k if k <= receptive_limit else 3 for k in (3 + 2 * i for i in range(branches)))
    return [(k - 1) // 2 for k in sizes]


class EESP(nn.Module):
    """Extremely Efficient Spatial Pyramid unit: reduce → split → transform → hierarchical fusion → merge.

    ``x → reduce`` (1×1 grouped (``branches`` groups) conv-BN-PReLU to ``out/branches`` channels)
    ``→`` ``branches`` parallel depthwise 3×3 convs (dilations from :func:`eesp_dilations`, stride
    ``stride``) whose outputs are summed cumulatively (hierarchical feature fusion: ``y_k = d_k +
    y_{k-1}``) ``→ cat → BN → PReLU → expand`` (1×1 grouped conv-BN). With stride 1 the input is
    added back (when the channels match) and a PReLU follows; with stride 2 the raw expanded map
    is returned, for :class:`EESPDownsampler` to merge and activate.

    In int8 the BN after the concat runs as torch's quantized batch norm (nothing to fold it into:
    it scales cumulative sums of the branches).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        branches: int = 4,
        receptive_limit: int = 7,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"EESP stride must be 1 or 2, got {stride}")
        if out_channels % branches or in_channels % branches:
            raise ValueError(f"EESP channels ({in_channels} → {out_channels}) must divide into {branches} branches")
        width = out_channels // branches
        self.stride = stride
        self.proj_1x1 = ConvModule2d(
            in_channels, width, 1, groups=branches, bias=False, norm_layer="bn", act_layer=nn.PReLU(width)
        )
        self.spp_dw = nn.ModuleList(
            nn.Conv2d(width, width, 3, stride, padding=d, dilation=d, groups=width, bias=False)
            for d in eesp_dilations(branches, receptive_limit)
        )
        self.conv_1x1_exp = ConvModule2d(out_channels, out_channels, 1, groups=branches, bias=False, norm_layer="bn")
        self.bn_after_cat = nn.BatchNorm2d(out_channels)
        self.act_after_cat = nn.PReLU(out_channels)
        self.hff = nn.ModuleList(Add() for _ in range(branches - 1))
        self.cat = Cat(dim=1)
        self.residual = stride == 1 and in_channels == out_channels
        self.add = Add() if self.residual else None
        self.module_act = nn.PReLU(out_channels) if stride == 1 else None

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.proj_1x1(x)
        outputs = [self.spp_dw[0](reduced)]
        for conv, add in zip(self.spp_dw[1:], self.hff):
            outputs.append(add(conv(reduced), outputs[-1]))
        out = self.conv_1x1_exp(self.act_after_cat(self.bn_after_cat(self.cat(outputs))))
        if self.module_act is None:
            return out
        if self.add is not None:
            out = self.add(out, x)
        return self.module_act(out)


class EESPDownsampler(nn.Module):
    """ESPNetv2's strided unit: ``nn.PReLU(cat(avgpool(x), EESP_s2(x)) [+ shortcut(image)])``.

    The EESP branch makes ``out - in`` channels, the 3×3 s2 average pool keeps the ``in`` input
    channels. With ``reinforce`` the input image, average-pooled to this unit's output size (the
    caller passes it: the model pools the quantized image once per resolution), goes through a
    3×3 conv-BN-PReLU and a 1×1 conv-BN to ``out`` channels and is added (the paper's long-range
    shortcut). The reference builds the shortcut at the last down-sampler too but never calls it,
    and gives its stride-2 EESP an output PReLU it never calls: neither exists here.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        branches: int = 4,
        receptive_limit: int = 9,
        reinforce: bool = True,
        image_channels: int = 3,
        reinforce_channels: int = 3,
    ) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ValueError(f"EESPDownsampler widens the input: out ({out_channels}) must exceed in ({in_channels})")
        self.eesp = EESP(in_channels, out_channels - in_channels, 2, branches, receptive_limit)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = (
            nn.Sequential(
                ConvModule2d(
                    image_channels,
                    reinforce_channels,
                    3,
                    padding=1,
                    bias=False,
                    norm_layer="bn",
                    act_layer=nn.PReLU(reinforce_channels),
                ),
                ConvModule2d(reinforce_channels, out_channels, 1, bias=False, norm_layer="bn"),
            )
            if reinforce
            else None
        )
        self.act = nn.PReLU(out_channels)
        self.cat = Cat(dim=1)
        self.add = Add() if reinforce else None

    def forward(self, x: Tensor, image: Tensor | None = None) -> Tensor:
        """``image``: the input image average-pooled to the output size (required with ``reinforce``)."""
        out = self.cat([self.avg(x), self.eesp(x)])
        if self.inp_reinf is not None:
            if image is None:
                raise ValueError("EESPDownsampler(reinforce=True) needs the pooled input image")
            if image.shape[-2:] != out.shape[-2:]:
                raise ValueError(f"pooled image is {tuple(image.shape[-2:])}, the output {tuple(out.shape[-2:])}")
            out = self.add(out, self.inp_reinf(image))
        return self.act(out)


class BNPReLU(nn.Module):
    """``BatchNorm2d`` (eps 1e-3, as ESPNet's code) → per-channel ``PReLU``, applied to a concat or a sum.

    Nothing precedes it to fold into, so in int8 it runs as torch's quantized batch norm followed
    by the exact per-channel PReLU lookup.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, eps=1e-3)
        self.act = nn.PReLU(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(x))


class ESP(nn.Module):
    """ESPNet v1's Efficient Spatial Pyramid module: reduce → split → transform → HFF → merge.

    ``x → reduce`` (a 1×1 conv, or a 3×3 stride-2 conv for the strided down-sampler; no norm) to
    ``n = out // 5`` channels ``→`` five parallel 3×3 convs with dilations 1, 2, 4, 8, 16 (the
    first makes the remaining ``out - 4n`` channels) ``→`` hierarchical feature fusion: the
    dilated branches are summed cumulatively (``y_k = d_k + y_{k-1}``), which removes the
    gridding of large dilations ``→ cat → [+ x] → BN → PReLU``. The input is added back when
    ``residual`` (stride 1, equal channels). Layout and parameter count follow the authors' code
    (``DownSamplerB`` for stride 2, ``DilatedParllelResidualBlockB`` otherwise).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ESP stride must be 1 or 2, got {stride}")
        if out_channels < len(ESP_DILATIONS):
            raise ValueError(f"ESP needs at least {len(ESP_DILATIONS)} output channels, got {out_channels}")
        self.residual = residual and stride == 1
        if self.residual and in_channels != out_channels:
            raise ValueError(
                f"a residual ESP needs equal channels, got {in_channels} → {out_channels}; pass residual=False"
            )
        n = out_channels // len(ESP_DILATIONS)
        first = out_channels - (len(ESP_DILATIONS) - 1) * n
        k = 3 if stride == 2 else 1
        self.reduce = nn.Conv2d(in_channels, n, k, stride, padding=k // 2, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, first if i == 0 else n, 3, padding=d, dilation=d, bias=False)
            for i, d in enumerate(ESP_DILATIONS)
        )
        self.hff = nn.ModuleList(Add() for _ in range(len(ESP_DILATIONS) - 2))
        self.cat = Cat(dim=1)
        self.add = Add() if self.residual else None
        self.out = BNPReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        reduced = self.reduce(x)
        first, fused = self.branches[0](reduced), [self.branches[1](reduced)]
        for conv, add in zip(self.branches[2:], self.hff):
            fused.append(add(conv(reduced), fused[-1]))
        out = self.cat([first, *fused])
        if self.add is not None:
            out = self.add(x, out)
        return self.out(out)
