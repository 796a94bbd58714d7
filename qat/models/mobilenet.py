"""Quantizable MobileNet V1-V4, plus the staged classifier layout shared by the CNN zoo.

Every model is ``QuantStub → stem → 4 stages (strides 4, 8, 16, 32) → head → classifier →
DeQuantStub``. Common keyword arguments:

- ``input_scale`` (default 1/128): fixed input grid for inputs normalised to [-1, 1);
  ``None`` observes the input range instead;
- ``stem="imagenet" | "cifar"``: ``"cifar"`` sets the stride of the stem conv *and* of the first
  down-sampling block to 1 (nothing else changes, parameter count included), so the network
  down-samples 8x instead of 32x and a 32x32 input ends on a 4x4 map. Feature strides become
  1, 2, 4, 8;
- ``include_top=False``: no head/classifier; ``forward`` returns the four stage outputs
  (strides 4, 8, 16, 32 with the ImageNet stem), each through its own ``DeQuantStub``.

Parameter counts at width 1.0 and 1000 classes equal torchvision's (``mobilenet_v2``
3,504,872; ``mobilenet_v3_large`` 5,483,032; ``mobilenet_v3_small`` 2,542,856) and the
weights load by order (same layers, same order). MobileNetV1 (4,231,976) and V4 (timm layout)
are compared with their papers in each builder's docstring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

from torch import Tensor, nn

from qat.models.registry import register_model
from qat.nn.blocks.mobilenet import (
    DepthwiseSeparableConv,
    FusedInvertedBottleneck,
    InvertedResidual,
    InvertedResidualV3,
    MobileMQA,
    UniversalInvertedBottleneck,
    batch_norm,
)
from qat.nn.conv import ConvModule2d
from qat.nn.se import make_divisible
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = ["StagedClassifier", "check_stem", "cifar_strides", "init_weights", "split_stages"]

_STEMS = ("imagenet", "cifar")


class StagedClassifier(nn.Module):
    """``QuantStub → stem → stages → head → classifier → DeQuantStub`` (or multi-scale features).

    ``head`` maps the last stage to a flat vector (final 1x1 conv, global pool, flatten) and
    ``classifier`` maps that vector to logits. With ``head=None`` and ``classifier=None`` the model
    is a backbone: ``forward`` returns every stage output, each through its own ``DeQuantStub``.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: Sequence[nn.Module],
        stage_channels: Sequence[int],
        head: nn.Module | None,
        classifier: nn.Module | None,
        input_scale: float | None = 1 / 128,
    ) -> None:
        super().__init__()
        if (head is None) != (classifier is None):
            raise ValueError("give both head and classifier (classification) or neither (features)")
        if len(stages) != len(stage_channels):
            raise ValueError("one channel count per stage")
        self.quant = QuantStub(scale=input_scale)
        self.stem = stem
        self.stages = nn.Sequential(*stages)
        self.feature_channels = list(stage_channels)
        self.include_top = head is not None
        if self.include_top:
            self.head = head
            self.classifier = classifier
            self.dequant = DeQuantStub()
        else:
            self.dequants = nn.ModuleList(DeQuantStub() for _ in stages)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.stem(self.quant(x))
        if self.include_top:
            return self.dequant(self.classifier(self.head(self.stages(x))))
        features = []
        for stage, dequant in zip(self.stages, self.dequants):
            x = stage(x)
            features.append(dequant(x))
        return features


def check_stem(stem: str) -> bool:
    """Validate ``stem`` and return whether it is the CIFAR (stride-1) variant."""
    if stem not in _STEMS:
        raise ValueError(f"stem must be one of {_STEMS}, got {stem!r}")
    return stem == "cifar"


def cifar_strides(strides: Sequence[int], cifar: bool) -> list[int]:
    """Per-block strides; with the CIFAR stem the first stride-2 block runs at stride 1."""
    out = list(strides)
    if cifar and 2 in out:
        out[out.index(2)] = 1
    return out


def split_stages(blocks: Sequence[nn.Module], downsamples: Sequence[bool]) -> tuple[list[nn.Module], list[nn.Module]]:
    """Cut a flat block list before each block that down-samples (in the ImageNet layout).

    Returns ``(pre, stages)``: blocks before the first down-sampling block (they run at the
    stem's resolution and join the stem) and one ``nn.Sequential`` per resolution.
    """
    pre: list[nn.Module] = []
    groups: list[list[nn.Module]] = []
    for block, down in zip(blocks, downsamples):
        if down:
            groups.append([])
        (groups[-1] if groups else pre).append(block)
    return pre, [nn.Sequential(*g) for g in groups]


def _out_channels(stage: nn.Module) -> int:
    """Channels a stage outputs: those of its last conv (every block here ends with a conv)."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def init_weights(model: nn.Module, linear: str | None = "normal") -> nn.Module:
    """torchvision's initialisation: conv kaiming-normal (fan-out), BN 1/0, Linear N(0, 0.01) (``"normal"``),
    U(±1/sqrt(out)) (``"uniform"``) or PyTorch's default (``None``)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear is not None:
            if linear == "normal":
                nn.init.normal_(m.weight, 0, 0.01)
            else:
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
            nn.init.zeros_(m.bias)
    return model


def _pooled_head(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


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
    stem_mod = ConvModule2d(3, c_in, 3, stride=1 if cifar else 2, padding=1, norm_layer="bn", act_layer="relu")
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
    channels = [_out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        head = _pooled_head()
        classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in, num_classes))
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
    stem_mod = ConvModule2d(3, c_in, 3, stride=1 if cifar else 2, padding=1, norm_layer="bn", act_layer="relu6")
    specs = [
        (t, make_divisible(c * width_mult, 8), s if i == 0 else 1) for t, c, n, s in _V2_SETTINGS for i in range(n)
    ]
    nominal = [s for *_, s in specs]
    blocks = []
    for (t, c_out, _), stride in zip(specs, cifar_strides(nominal, cifar)):
        blocks.append(InvertedResidual(c_in, c_out, stride, expand_ratio=t))
        c_in = c_out
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [_out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        head = _pooled_head(ConvModule2d(c_in, last, 1, norm_layer="bn", act_layer="relu6"))
        classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
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
    stem_mod = ConvModule2d(
        3, c_stem, 3, stride=1 if cifar else 2, padding=1, norm_layer=bn(c_stem), act_layer="hardswish"
    )
    nominal = [spec[-1] for spec in settings]
    blocks = [
        InvertedResidualV3(adjust(c_in), k, adjust(c_exp), adjust(c_out), se, act, stride)
        for (c_in, k, c_exp, c_out, se, act, _), stride in zip(settings, cifar_strides(nominal, cifar))
    ]
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [_out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        c_last_in = adjust(settings[-1][3])
        c_conv = 6 * c_last_in
        last = adjust(last_channel)
        head = _pooled_head(ConvModule2d(c_last_in, c_conv, 1, norm_layer=bn(c_conv), act_layer="hardswish"))
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
    stem_mod = ConvModule2d(3, c_in, 3, stride=1 if cifar else 2, padding=1, norm_layer="bn", act_layer="relu")
    nominal = [spec[3] if spec[0] == "uir" else (1 if spec[0] == "mqa" else spec[2]) for spec in specs]
    blocks = []
    for spec, stride in zip(specs, cifar_strides(nominal, cifar)):
        block, c_in = _v4_block(spec, c_in, stride, layer_scale)
        blocks.append(block)
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [_out_channels(stage) for stage in stages]
    head = classifier = None
    if include_top:
        head = nn.Sequential(
            ConvModule2d(c_in, 960, 1, norm_layer="bn", act_layer="relu"),
            nn.AdaptiveAvgPool2d(1),
            ConvModule2d(960, 1280, 1, norm_layer="bn", act_layer="relu"),
            nn.Flatten(1),
        )
        classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
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
