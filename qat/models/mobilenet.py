"""Quantizable MobileNet V1-V4 on the staged layout of :mod:`qat.models.base`.

Every model is ``QuantStub → stem → 4 stages (strides 4, 8, 16, 32) → head → classifier →
DeQuantStub``; ``input_scale``, ``stem`` and ``include_top`` work as described in
:mod:`qat.models.base` (CIFAR-stem feature strides 1, 2, 4, 8).

Parameter counts at width 1.0 and 1000 classes equal torchvision's (``mobilenet_v2``
3,504,872; ``mobilenet_v3_large`` 5,483,032; ``mobilenet_v3_small`` 2,542,856) and the
weights load by order (same layers, same order). MobileNetV1 (4,231,976) and V4 (timm layout)
are compared with their papers in each builder's docstring.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from torch import nn

from qat.models.base import (
    StagedClassifier,
    check_stem,
    cifar_strides,
    classifier_head,
    init_weights,
    out_channels,
    pooled_head,
    pooled_top,
    split_stages,
    stem_conv,
)
from qat.models.registry import register_model
from qat.nn.blocks.common import batch_norm
from qat.nn.blocks.mobilenet import (
    DepthwiseSeparableConv,
    FusedInvertedBottleneck,
    InvertedResidual,
    InvertedResidualV3,
    MobileMQA,
    UniversalInvertedBottleneck,
)
from qat.nn.conv import ConvModule2d
from qat.nn.se import make_divisible

__all__ = [
    "mobilenet_v1",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "mobilenet_v4_conv_medium",
    "mobilenet_v4_conv_small",
    "mobilenet_v4_hybrid_medium",
]

# ---------------------------------------------------------------- MobileNetV1


_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *((512, 1),) * 5, (1024, 2), (1024, 1))


@register_model
def mobilenet_v1(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    output_stride: int = 32,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.0,
) -> StagedClassifier:
    """MobileNetV1 (Howard et al. 2017): 3x3 conv then 13 depthwise-separable blocks, ReLU.

    Channels are ``make_divisible(c * width_mult, 8)``. ``output_stride`` 8 or 16 replaces the
    later strides by dilation (DeepLab-style). At 1.0x: 4,231,976 parameters vs the paper's
    4.2M (rounding; timm's ``mobilenetv1_100`` has the same layers and count).
    """
    cifar = check_stem(stem)
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    c_in = make_divisible(32 * width_mult, 8)
    stem_mod = stem_conv(c_in, cifar, "relu")
    nominal = [s for _, s in _V1_BLOCKS]
    blocks, current, dilation = [], (1 if cifar else 2), 1
    for (c, _), stride in zip(_V1_BLOCKS, cifar_strides(nominal, cifar)):
        c_out = make_divisible(c * width_mult, 8)
        block_dilation = dilation
        if stride == 2 and current * 2 > output_stride:  # keep the resolution, dilate what follows
            stride, dilation = 1, dilation * 2
        current *= stride
        blocks.append(DepthwiseSeparableConv(c_in, c_out, stride=stride, dilation=block_dilation))
        c_in = c_out
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [out_channels(stage) for stage in stages]
    head, classifier = pooled_top(include_top, c_in, num_classes, dropout)
    model = StagedClassifier(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)
    return init_weights(model)


# ---------------------------------------------------------------- MobileNetV2


_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@register_model
def mobilenet_v2(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.2,
) -> StagedClassifier:
    """MobileNetV2 (Sandler et al. 2018), torchvision's layout: ReLU6 everywhere (fuses exactly).

    3,504,872 parameters at 1.0x / 1000 classes, equal to ``torchvision.models.mobilenet_v2``.
    """
    cifar = check_stem(stem)
    c_in = make_divisible(32 * width_mult, 8)
    last = make_divisible(1280 * max(1.0, width_mult), 8)
    stem_mod = stem_conv(c_in, cifar, "relu6")
    specs = [
        (t, make_divisible(c * width_mult, 8), s if i == 0 else 1) for t, c, n, s in _V2_SETTINGS for i in range(n)
    ]
    nominal = [s for *_, s in specs]
    blocks = []
    for (t, c_out, _), stride in zip(specs, cifar_strides(nominal, cifar)):
        blocks.append(InvertedResidual(c_in, c_out, stride, expand_ratio=t))
        c_in = c_out
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [out_channels(stage) for stage in stages]
    head, classifier = pooled_top(include_top, c_in, num_classes, dropout, head_channels=last, act_layer="relu6")
    model = StagedClassifier(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)
    return init_weights(model)


# ---------------------------------------------------------------- MobileNetV3

# (in, kernel, expanded, out, SE, activation, stride) -- the MobileNetV3 paper's tables 1 and 2.
_V3_LARGE = (
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2),
    (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1),
    (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2),
    (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
)
_V3_SMALL = (
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1),
    (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1),
    (96, 5, 576, 96, True, "hardswish", 1),
)


def _mobilenet_v3(
    settings: Sequence[tuple],
    last_channel: int,
    num_classes: int,
    width_mult: float,
    stem: str,
    include_top: bool,
    input_scale: float | None,
    dropout: float,
) -> StagedClassifier:
    cifar = check_stem(stem)
    bn = partial(batch_norm, eps=1e-3, momentum=0.01)  # torchvision's MobileNetV3 BN settings

    def adjust(channels: int) -> int:
        return make_divisible(channels * width_mult, 8)

    c_stem = adjust(settings[0][0])
    stem_mod = stem_conv(c_stem, cifar, "hardswish", norm_layer=bn(c_stem))
    nominal = [spec[-1] for spec in settings]
    blocks = [
        InvertedResidualV3(adjust(c_in), k, adjust(c_exp), adjust(c_out), se, act, stride)
        for (c_in, k, c_exp, c_out, se, act, _), stride in zip(settings, cifar_strides(nominal, cifar))
    ]
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        c_last_in = adjust(settings[-1][3])
        c_conv = 6 * c_last_in
        last = adjust(last_channel)
        head = pooled_head(ConvModule2d(c_last_in, c_conv, 1, norm_layer=bn(c_conv), act_layer="hardswish"))
        classifier = nn.Sequential(
            nn.Linear(c_conv, last), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(last, num_classes)
        )
    model = StagedClassifier(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)
    return init_weights(model)


@register_model
def mobilenet_v3_large(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.2,
) -> StagedClassifier:
    """MobileNetV3-Large (Howard et al. 2019), torchvision's layout (BN eps 1e-3, momentum 0.01).

    ReLU blocks fuse conv+BN+ReLU; hardswish runs as an int8 lookup table. 5,483,032
    parameters at 1.0x / 1000 classes, equal to ``torchvision.models.mobilenet_v3_large``.
    """
    return _mobilenet_v3(_V3_LARGE, 1280, num_classes, width_mult, stem, include_top, input_scale, dropout)


@register_model
def mobilenet_v3_small(
    num_classes: int = 1000,
    width_mult: float = 1.0,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.2,
) -> StagedClassifier:
    """MobileNetV3-Small, torchvision's layout. 2,542,856 parameters, equal to torchvision's."""
    return _mobilenet_v3(_V3_SMALL, 1024, num_classes, width_mult, stem, include_top, input_scale, dropout)


# ---------------------------------------------------------------- MobileNetV4

# Block specs (timm's ``_gen_mobilenet_v4`` / the paper's tables), one tuple per block:
#   ("cn", kernel, stride, out)                       conv+BN+ReLU
#   ("er", kernel, stride, expand, out)               FusedIB
#   ("uir", start_dw, middle_dw, stride, expand, out) UIB (0 = no such dw conv)
#   ("mqa", heads, kv_stride, key_dim, out)           mobile MQA (3x3 dw K/V down-sampling)
_V4_CONV_SMALL = (
    ("cn", 3, 2, 32),
    ("cn", 1, 1, 32),
    ("cn", 3, 2, 96),
    ("cn", 1, 1, 64),
    ("uir", 5, 5, 2, 3, 96),
    *(("uir", 0, 3, 1, 2, 96),) * 4,
    ("uir", 3, 0, 1, 4, 96),
    ("uir", 3, 3, 2, 6, 128),
    ("uir", 5, 5, 1, 4, 128),
    ("uir", 0, 5, 1, 4, 128),
    ("uir", 0, 5, 1, 3, 128),
    *(("uir", 0, 3, 1, 4, 128),) * 2,
)
_V4_CONV_MEDIUM = (
    ("er", 3, 2, 4, 48),
    ("uir", 3, 5, 2, 4, 80),
    ("uir", 3, 3, 1, 2, 80),
    ("uir", 3, 5, 2, 6, 160),
    *(("uir", 3, 3, 1, 4, 160),) * 2,
    ("uir", 3, 5, 1, 4, 160),
    ("uir", 3, 3, 1, 4, 160),
    ("uir", 3, 0, 1, 4, 160),
    ("uir", 0, 0, 1, 2, 160),
    ("uir", 3, 0, 1, 4, 160),
    ("uir", 5, 5, 2, 6, 256),
    ("uir", 5, 5, 1, 4, 256),
    *(("uir", 3, 5, 1, 4, 256),) * 2,
    ("uir", 0, 0, 1, 4, 256),
    ("uir", 3, 0, 1, 4, 256),
    ("uir", 3, 5, 1, 2, 256),
    ("uir", 5, 5, 1, 4, 256),
    *(("uir", 0, 0, 1, 4, 256),) * 2,
    ("uir", 5, 0, 1, 2, 256),
)
_V4_HYBRID_MEDIUM = (
    ("er", 3, 2, 4, 48),
    ("uir", 3, 5, 2, 4, 80),
    ("uir", 3, 3, 1, 2, 80),
    ("uir", 3, 5, 2, 6, 160),
    ("uir", 0, 0, 1, 2, 160),
    ("uir", 3, 3, 1, 4, 160),
    ("uir", 3, 5, 1, 4, 160),
    ("mqa", 4, 2, 64, 160),
    ("uir", 3, 3, 1, 4, 160),
    ("mqa", 4, 2, 64, 160),
    ("uir", 3, 0, 1, 4, 160),
    ("mqa", 4, 2, 64, 160),
    ("uir", 3, 3, 1, 4, 160),
    ("mqa", 4, 2, 64, 160),
    ("uir", 3, 0, 1, 4, 160),
    ("uir", 5, 5, 2, 6, 256),
    ("uir", 5, 5, 1, 4, 256),
    *(("uir", 3, 5, 1, 4, 256),) * 2,
    ("uir", 0, 0, 1, 2, 256),
    ("uir", 3, 5, 1, 2, 256),
    ("uir", 0, 0, 1, 2, 256),
    ("uir", 0, 0, 1, 4, 256),
    ("mqa", 4, 1, 64, 256),
    ("uir", 3, 0, 1, 4, 256),
    ("mqa", 4, 1, 64, 256),
    ("uir", 5, 5, 1, 4, 256),
    ("mqa", 4, 1, 64, 256),
    ("uir", 5, 0, 1, 4, 256),
    ("mqa", 4, 1, 64, 256),
    ("uir", 5, 0, 1, 4, 256),
)


def _v4_block(spec: tuple, c_in: int, stride: int, layer_scale: float | None) -> tuple[nn.Module, int]:
    kind = spec[0]
    if kind == "cn":
        _, k, _, c_out = spec
        block = ConvModule2d(c_in, c_out, k, stride=stride, padding=(k - 1) // 2, norm_layer="bn", act_layer="relu")
    elif kind == "er":
        _, k, _, e, c_out = spec
        block = FusedInvertedBottleneck(c_in, c_out, k, stride, e)
    elif kind == "uir":
        _, start, middle, _, e, c_out = spec
        block = UniversalInvertedBottleneck(c_in, c_out, start, middle, stride, e, layer_scale_init_value=layer_scale)
    else:
        _, heads, kv_stride, dim, c_out = spec
        block = MobileMQA(c_in, c_out, heads, dim, dim, kv_stride, 3, layer_scale_init_value=layer_scale)
    return block, c_out


def _mobilenet_v4(
    specs: Sequence[tuple],
    layer_scale: float | None,
    num_classes: int,
    stem: str,
    include_top: bool,
    input_scale: float | None,
    dropout: float,
) -> StagedClassifier:
    cifar = check_stem(stem)
    c_in = 32
    stem_mod = stem_conv(c_in, cifar, "relu")
    nominal = [spec[3] if spec[0] == "uir" else (1 if spec[0] == "mqa" else spec[2]) for spec in specs]
    blocks = []
    for spec, stride in zip(specs, cifar_strides(nominal, cifar)):
        block, c_in = _v4_block(spec, c_in, stride, layer_scale)
        blocks.append(block)
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        head = nn.Sequential(
            ConvModule2d(c_in, 960, 1, norm_layer="bn", act_layer="relu"),
            nn.AdaptiveAvgPool2d(1),
            ConvModule2d(960, 1280, 1, norm_layer="bn", act_layer="relu"),
            nn.Flatten(1),
        )
        classifier = classifier_head(1280, num_classes, dropout)
    model = StagedClassifier(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)
    init_weights(model, linear="uniform")
    for m in model.modules():
        if isinstance(m, MobileMQA):  # xavier keeps the attention logits tame (timm)
            for proj in (m.query, m.key, m.value, m.output):
                nn.init.xavier_uniform_(proj.conv.weight)
    return model


@register_model
def mobilenet_v4_conv_small(
    num_classes: int = 1000,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.0,
) -> StagedClassifier:
    """MobileNetV4-Conv-S (Qin et al. 2024): 3,774,024 parameters vs the paper's 3.8M (rounding only).

    Same layers, in the same order, as timm's ``mobilenetv4_conv_small`` (its weights load by order).
    """
    return _mobilenet_v4(_V4_CONV_SMALL, None, num_classes, stem, include_top, input_scale, dropout)


@register_model
def mobilenet_v4_conv_medium(
    num_classes: int = 1000,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.0,
) -> StagedClassifier:
    """MobileNetV4-Conv-M: 9,715,512 parameters vs the paper's 9.7M (rounding), timm's layout."""
    return _mobilenet_v4(_V4_CONV_MEDIUM, None, num_classes, stem, include_top, input_scale, dropout)


@register_model
def mobilenet_v4_hybrid_medium(
    num_classes: int = 1000,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
    dropout: float = 0.0,
) -> StagedClassifier:
    """MobileNetV4-Hybrid-M: Conv-M-like UIBs, 8 mobile-MQA blocks, 1e-5 layer scales on every UIB/MQA.

    11,074,648 parameters vs the paper's 11.1M (rounding), timm's layout; the 6,176 layer-scale
    parameters fold into the preceding conv/BN, so the int8 model does not carry them.
    """
    return _mobilenet_v4(_V4_HYBRID_MEDIUM, 1e-5, num_classes, stem, include_top, input_scale, dropout)
