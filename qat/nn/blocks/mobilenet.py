"""MobileNet V1-V4 building blocks from ``qat.nn`` layers (every conv+BN(+ReLU/ReLU6) fuses).

- :class:`DepthwiseSeparableConv` -- MobileNetV1: dw 3x3 (optionally dilated) + pw 1x1;
- :class:`InvertedResidual` -- MobileNetV2: expand 1x1 → dw 3x3 → linear project, ReLU6;
- :class:`InvertedResidualV3` -- MobileNetV3 bneck: like V2 with SE (hard-sigmoid gate) and ReLU/hardswish;
- :class:`FusedInvertedBottleneck` -- MobileNetV4 FusedIB: full kxk expand → linear project;
- :class:`UniversalInvertedBottleneck` -- MobileNetV4 UIB (ExtraDW / IB / ConvNext / FFN);
- :class:`MobileMQA` -- MobileNetV4 mobile multi-query attention with optional K/V down-sampling.

Residual additions use one :class:`qat.nn.Add` per block; layer scales (MobileNetV4 hybrid) are
declared for folding into the conv/BN before them, so they cost nothing in int8.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from qat.nn.activations import Softmax
from qat.nn.blocks.common import ActSpec, batch_norm
from qat.nn.conv import ChannelScale2d, ConvModule2d
from qat.nn.functional import Add, MatMul, MulScalar
from qat.nn.se import SqueezeExcite, make_divisible

__all__ = [
    "DepthwiseSeparableConv",
    "FusedInvertedBottleneck",
    "InvertedResidual",
    "InvertedResidualV3",
    "MobileMQA",
    "UniversalInvertedBottleneck",
]


def _pad(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size - 1) // 2 * dilation


class DepthwiseSeparableConv(nn.Module):
    """MobileNetV1 block: depthwise kxk conv+BN+act → pointwise 1x1 conv+BN+act.

    ``dilation`` enlarges the depthwise receptive field without down-sampling (dense prediction
    with a reduced output stride); padding keeps the spatial size at stride 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        kernel_size: int = 3,
        act_layer: ActSpec = "relu",
    ) -> None:
        super().__init__()
        self.dw = ConvModule2d(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            padding=_pad(kernel_size, dilation),
            dilation=dilation,
            groups=in_channels,
            norm_layer="bn",
            act_layer=act_layer,
        )
        self.pw = ConvModule2d(in_channels, out_channels, 1, norm_layer="bn", act_layer=act_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped at ratio 1) → 3x3 dw → 1x1 linear project, ReLU6.

    The residual is added when the block keeps shape (stride 1, ``in == out``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6.0,
        dilation: int = 1,
        act_layer: ActSpec = "relu6",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = (
            ConvModule2d(in_channels, hidden, 1, norm_layer="bn", act_layer=act_layer)
            if expand_ratio != 1
            else nn.Identity()
        )
        self.dw = ConvModule2d(
            hidden,
            hidden,
            3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            groups=hidden,
            norm_layer="bn",
            act_layer=act_layer,
        )
        self.project = ConvModule2d(hidden, out_channels, 1, norm_layer="bn")
        self.add = Add() if self.use_residual else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return self.add(x, y) if self.add is not None else y


class InvertedResidualV3(nn.Module):
    """MobileNetV3 bneck: 1x1 expand → kxk dw → SE → 1x1 linear project.

    ``act_layer`` is ``"relu"`` (fuses into the convs) or ``"hardswish"``. SE squeezes to
    ``make_divisible(expanded // 4, 8)`` channels with ReLU and a hard-sigmoid gate (torchvision).
    With ``dilation > 1`` the dw conv runs at stride 1 (torchvision's dilated variant).
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        expanded_channels: int,
        out_channels: int,
        use_se: bool,
        act_layer: ActSpec,
        stride: int = 1,
        dilation: int = 1,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.01,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidualV3 stride must be 1 or 2, got {stride}")
        self.use_residual = stride == 1 and in_channels == out_channels
        bn = partial(batch_norm, eps=bn_eps, momentum=bn_momentum)
        self.expand = (
            ConvModule2d(in_channels, expanded_channels, 1, norm_layer=bn(expanded_channels), act_layer=act_layer)
            if expanded_channels != in_channels
            else nn.Identity()
        )
        self.dw = ConvModule2d(
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride=1 if dilation > 1 else stride,
            padding=_pad(kernel_size, dilation),
            dilation=dilation,
            groups=expanded_channels,
            norm_layer=bn(expanded_channels),
            act_layer=act_layer,
        )
        self.se = (
            SqueezeExcite(expanded_channels, make_divisible(expanded_channels // 4, 8), gate="hardsigmoid")
            if use_se
            else nn.Identity()
        )
        self.project = ConvModule2d(expanded_channels, out_channels, 1, norm_layer=bn(out_channels))
        self.add = Add() if self.use_residual else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return self.add(x, y) if self.add is not None else y


class FusedInvertedBottleneck(nn.Module):
    """MobileNetV4 FusedIB (EfficientNet-EdgeTPU "edge residual"): kxk expand conv+BN+act → 1x1 project+BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        act_layer: ActSpec = "relu",
    ) -> None:
        super().__init__()
        hidden = make_divisible(in_channels * expand_ratio, 8)
        self.expand = ConvModule2d(
            in_channels,
            hidden,
            kernel_size,
            stride=stride,
            padding=_pad(kernel_size),
            norm_layer="bn",
            act_layer=act_layer,
        )
        self.project = ConvModule2d(hidden, out_channels, 1, norm_layer="bn")
        self.add = Add() if stride == 1 and in_channels == out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.expand(x))
        return self.add(x, y) if self.add is not None else y


class UniversalInvertedBottleneck(nn.Module):
    """MobileNetV4 UIB: [start dw] → 1x1 expand → [middle dw] → 1x1 project (→ layer scale) (+ residual).

    The two optional depthwise convs give the paper's four variants (kernel 0 = absent):

    ====================  ==================  ===================
    variant               ``start_dw_kernel``  ``middle_dw_kernel``
    ====================  ==================  ===================
    ExtraDW               k                   k'
    IB (inverted bneck)   0                   k
    ConvNext-like         k                   0
    FFN                   0                   0
    ====================  ==================  ===================

    The start dw (conv+BN, no activation) down-samples only when there is no middle dw. The
    expanded width is ``make_divisible(in * expand_ratio, 8)``. ``layer_scale_init_value``
    (hybrid models: 1e-5) adds a :class:`ChannelScale2d` folded into the projection's BN.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        start_dw_kernel: int = 0,
        middle_dw_kernel: int = 3,
        stride: int = 1,
        expand_ratio: float = 4.0,
        act_layer: ActSpec = "relu",
        layer_scale_init_value: float | None = None,
    ) -> None:
        super().__init__()
        if stride > 1 and not (start_dw_kernel or middle_dw_kernel):
            raise ValueError("a strided UIB needs a start or a middle depthwise conv")
        hidden = make_divisible(in_channels * expand_ratio, 8)
        self.start_dw = (
            ConvModule2d(
                in_channels,
                in_channels,
                start_dw_kernel,
                stride=1 if middle_dw_kernel else stride,
                padding=_pad(start_dw_kernel),
                groups=in_channels,
                norm_layer="bn",
            )
            if start_dw_kernel
            else nn.Identity()
        )
        self.expand = ConvModule2d(in_channels, hidden, 1, norm_layer="bn", act_layer=act_layer)
        self.middle_dw = (
            ConvModule2d(
                hidden,
                hidden,
                middle_dw_kernel,
                stride=stride,
                padding=_pad(middle_dw_kernel),
                groups=hidden,
                norm_layer="bn",
                act_layer=act_layer,
            )
            if middle_dw_kernel
            else nn.Identity()
        )
        self.project = ConvModule2d(hidden, out_channels, 1, norm_layer="bn")
        self.layer_scale = (
            ChannelScale2d(out_channels, layer_scale_init_value) if layer_scale_init_value is not None else None
        )
        self.add = Add() if stride == 1 and in_channels == out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.middle_dw(self.expand(self.start_dw(x))))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return self.add(x, y) if self.add is not None else y

    def fuse_patterns(self) -> list[list[str]]:
        return [["project.conv", "project.norm", "layer_scale"]] if self.layer_scale is not None else []


class MobileMQA(nn.Module):
    """MobileNetV4 mobile multi-query attention block: BN → MQA → (layer scale) (+ residual).

    All heads share one key and one value projection (multi-query). With ``kv_stride > 1``
    keys and values are computed on a map down-sampled by a strided depthwise conv+BN, which
    cuts the attention cost by ``kv_stride**2``. Queries are laid out as ``[B, heads*N, d]`` so
    both products are plain batched matmuls against the shared ``[B, d, M]`` keys and
    ``[B, M, d]`` values (no broadcasting over heads). The softmax runs on int8 with its fixed
    1/256 output grid; the 1/sqrt(d) scale is an int8 rescale of the queries.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        num_heads: int = 8,
        key_dim: int = 64,
        value_dim: int = 64,
        kv_stride: int = 1,
        dw_kernel_size: int = 3,
        layer_scale_init_value: float | None = None,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.num_heads, self.key_dim, self.value_dim = num_heads, key_dim, value_dim
        self.norm = nn.BatchNorm2d(in_channels)
        self.query = ConvModule2d(in_channels, num_heads * key_dim, 1, bias=False)
        self.key_down = self._down(in_channels, kv_stride, dw_kernel_size)
        self.key = ConvModule2d(in_channels, key_dim, 1, bias=False)
        self.value_down = self._down(in_channels, kv_stride, dw_kernel_size)
        self.value = ConvModule2d(in_channels, value_dim, 1, bias=False)
        self.scale = MulScalar(key_dim**-0.5)
        self.qk = MatMul()
        self.softmax = Softmax(dim=-1)
        self.av = MatMul()
        self.output = ConvModule2d(num_heads * value_dim, out_channels, 1, bias=False)
        self.layer_scale = (
            ChannelScale2d(out_channels, layer_scale_init_value) if layer_scale_init_value is not None else None
        )
        self.add = Add() if in_channels == out_channels else None

    @staticmethod
    def _down(channels: int, stride: int, kernel_size: int) -> nn.Module:
        if stride == 1:
            return nn.Identity()
        return ConvModule2d(
            channels, channels, kernel_size, stride=stride, padding=_pad(kernel_size), groups=channels, norm_layer="bn"
        )

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        n = h * w
        xn = self.norm(x)
        q = self.query(xn).reshape(b, self.num_heads, self.key_dim, n).transpose(2, 3)
        q = self.scale(q.reshape(b, self.num_heads * n, self.key_dim).contiguous())
        k = self.key(self.key_down(xn)).flatten(2)  # [B, d, M]: already transposed for q @ k^T
        v = self.value(self.value_down(xn)).flatten(2).transpose(1, 2).contiguous()  # [B, M, d]
        attn = self.softmax(self.qk(q, k))  # [B, heads*N, M]
        o = self.av(attn, v).reshape(b, self.num_heads, n, self.value_dim).transpose(2, 3)
        y = self.output(o.reshape(b, self.num_heads * self.value_dim, h, w).contiguous())
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return self.add(x, y) if self.add is not None else y

    def fuse_patterns(self) -> list[list[str]]:
        return [["output.conv", "layer_scale"]] if self.layer_scale is not None else []
