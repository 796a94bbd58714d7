"""The base every zoo model builds on: the staged layout, stem/head helpers and initialisation.

Every classifier here is ``QuantStub → stem → stages → head → classifier → DeQuantStub`` and takes
the same keyword arguments:

- ``input_scale`` (default 1/128): fixed input grid for inputs normalised to [-1, 1);
  ``None`` observes the input range instead;
- ``stem="imagenet" | "cifar"``: ``"cifar"`` sets the stride of the stem conv *and* of the first
  down-sampling block to 1 (nothing else changes, parameter count included), so the network
  down-samples 8x instead of 32x and a 32x32 input ends on a 4x4 map;
- ``include_top=False``: no head/classifier; ``forward`` returns the stage outputs (strides 4,
  8, 16, 32 with the ImageNet stem), each through its own ``DeQuantStub``, and the model's
  ``feature_channels`` lists their widths.

This module imports no model file: model files import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from torch import Tensor, nn

from qat.nn.blocks.common import ActSpec
from qat.nn.conv import ConvModule2d
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = [
    "STEMS",
    "FixedLayout",
    "FixedStagedClassifier",
    "NamedStagesClassifier",
    "StagedClassifier",
    "bottleneck_stages",
    "check_stem",
    "cifar_strides",
    "classifier_head",
    "deep_stem",
    "dequant_features",
    "feature_dequants",
    "init_weights",
    "out_channels",
    "pooled_head",
    "pooled_top",
    "split_stages",
    "stem_conv",
    "trunc_normal_init",
]

STEMS = ("imagenet", "cifar")


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
            self.dequants = feature_dequants(len(stages))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.stem(self.quant(x))
        if self.include_top:
            return self.dequant(self.classifier(self.head(self.stages(x))))
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return dequant_features(self.dequants, features)


class FixedLayout:
    """The keyword arguments of a model with one fixed layout (``dropout=None``: the class's ``DROPOUT``);
    the subclass's ``assemble`` builds the model from them."""

    DROPOUT: float = 0.0

    def __init__(
        self,
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float | None = None,
    ) -> None:
        drop = self.DROPOUT if dropout is None else dropout
        self.assemble(check_stem(stem), num_classes, include_top, input_scale, drop)

    def assemble(
        self, cifar: bool, num_classes: int, include_top: bool, input_scale: float | None, dropout: float
    ) -> None:
        """Initialise the module and register its layers."""
        raise NotImplementedError


class FixedStagedClassifier(FixedLayout, StagedClassifier):
    """A :class:`StagedClassifier` with one fixed layout: the subclass gives ``build`` (stem and stages),
    ``STAGE_CHANNELS`` and ``DROPOUT``; the head is :func:`pooled_top` and weights :func:`init_weights`
    (PyTorch's default Linear init)."""

    STAGE_CHANNELS: tuple[int, ...] = ()

    def assemble(
        self, cifar: bool, num_classes: int, include_top: bool, input_scale: float | None, dropout: float
    ) -> None:
        stem_mod, stages = self.build(cifar)
        head, classifier = pooled_top(include_top, self.STAGE_CHANNELS[-1], num_classes, dropout)
        StagedClassifier.__init__(self, stem_mod, stages, self.STAGE_CHANNELS, head, classifier, input_scale)
        init_weights(self, linear=None)

    @classmethod
    def build(cls, cifar: bool) -> tuple[nn.Module, list[nn.Module]]:
        """The stem and the four stages (``cifar``: the stride-1 stem variant)."""
        raise NotImplementedError


class NamedStagesClassifier(FixedLayout, nn.Module):
    """Base of the models that keep a reference's flat module names (torchvision's GoogLeNet/Inception v3).

    The subclass registers its layers in ``build`` and returns its stage outputs from ``stages_forward``;
    this class adds ``quant`` before them and, after them, ``avgpool → dropout → fc → dequant`` or one
    ``DeQuantStub`` per stage (``include_top=False``), with the reference's trunc-normal initialisation.
    """

    FEATURE_CHANNELS: tuple[int, ...] = ()
    INIT_STD: float = 0.01

    def assemble(
        self, cifar: bool, num_classes: int, include_top: bool, input_scale: float | None, dropout: float
    ) -> None:
        nn.Module.__init__(self)
        self.quant = QuantStub(scale=input_scale)
        self.build(cifar)
        self.include_top = include_top
        if include_top:
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(self.FEATURE_CHANNELS[-1], num_classes)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(len(self.FEATURE_CHANNELS))
        self.feature_channels = list(self.FEATURE_CHANNELS)
        trunc_normal_init(self, self.INIT_STD)

    def build(self, cifar: bool) -> None:
        """Register the layers between ``quant`` and the head (``cifar``: the stride-1 stem variant)."""
        raise NotImplementedError

    def stages_forward(self, x: Tensor) -> list[Tensor]:
        """The stage outputs for a quantized input; the last one feeds the head."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        features = self.stages_forward(self.quant(x))
        if self.include_top:
            return self.dequant(self.fc(self.dropout(self.avgpool(features[-1]).flatten(1))))
        return dequant_features(self.dequants, features)


def check_stem(stem: str) -> bool:
    """Validate ``stem`` and return whether it is the CIFAR (stride-1) variant."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    return stem == "cifar"


def stem_conv(
    out_channels: int,
    cifar: bool,
    act_layer: ActSpec | None,
    norm_layer: str | nn.Module = "bn",
    in_channels: int = 3,
    kernel_size: int = 3,
    padding: int | None = None,
    bias: bool = True,
) -> ConvModule2d:
    """The stem conv: ``kernel_size`` square, stride 2 (1 with the CIFAR stem), "same" padding by default."""
    pad = kernel_size // 2 if padding is None else padding
    return ConvModule2d(
        in_channels,
        out_channels,
        kernel_size,
        1 if cifar else 2,
        pad,
        bias=bias,
        norm_layer=norm_layer,
        act_layer=act_layer,
    )


def deep_stem(stem_width: int, cifar: bool, act_layer: ActSpec = "relu") -> nn.Sequential:
    """The "deep" stem of ResNet-C/D and ResNeSt: 3x3 convs to ``w`` (stride 2), ``w``, ``2w``, each
    BN+act, then a 3x3 stride-2 max-pool; the CIFAR stem runs the first conv at stride 1 and drops the pool."""
    return nn.Sequential(
        stem_conv(stem_width, cifar, act_layer, bias=False),
        ConvModule2d(stem_width, stem_width, 3, 1, 1, bias=False, norm_layer="bn", act_layer=act_layer),
        ConvModule2d(stem_width, 2 * stem_width, 3, 1, 1, bias=False, norm_layer="bn", act_layer=act_layer),
        nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1),
    )


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


def out_channels(stage: nn.Module) -> int:
    """Channels a stage outputs: those of its last conv (for stages that end with a conv)."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def bottleneck_stages(
    make_block: Callable[[int, int, int], nn.Module], layers: Sequence[int], planes: Sequence[int], c_in: int, expansion: int
) -> tuple[list[nn.Module], list[int]]:
    """ResNet-style stages: ``layers[i]`` blocks ``make_block(c_in, planes[i], stride)`` whose outputs are
    ``planes[i] * expansion`` wide, the first block of every stage but the first at stride 2.

    Returns the stages and their output channels."""
    stages: list[nn.Module] = []
    channels: list[int] = []
    for i, (width, n) in enumerate(zip(planes, layers)):
        blocks = []
        for j in range(n):
            blocks.append(make_block(c_in, width, 2 if i > 0 and j == 0 else 1))
            c_in = width * expansion
        stages.append(nn.Sequential(*blocks))
        channels.append(c_in)
    return stages, channels


def pooled_head(*layers: nn.Module) -> nn.Sequential:
    """``layers`` (e.g. a final 1x1 conv) → global average pool → flatten."""
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def classifier_head(in_features: int, num_classes: int, dropout: float = 0.0, bias: bool = True) -> nn.Sequential:
    """``Dropout → Linear``: the classifier of the staged models (state-dict keys ``1.weight``/``1.bias``)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes, bias=bias))


def pooled_top(
    include_top: bool,
    in_features: int,
    num_classes: int,
    dropout: float = 0.0,
    head_channels: int | None = None,
    act_layer: ActSpec = "relu",
    norm_layer: str | nn.Module = "bn",
    bias: bool = True,
) -> tuple[nn.Sequential | None, nn.Sequential | None]:
    """``(head, classifier)`` for :class:`StagedClassifier`: ``(None, None)`` without the top, else
    [1x1 conv to ``head_channels`` + norm + act] → pool → flatten, and ``Dropout → Linear``."""
    if not include_top:
        return None, None
    layers = []
    if head_channels is not None:
        layers.append(ConvModule2d(in_features, head_channels, 1, norm_layer=norm_layer, act_layer=act_layer))
        in_features = head_channels
    return pooled_head(*layers), classifier_head(in_features, num_classes, dropout, bias)


def feature_dequants(n: int) -> nn.ModuleList:
    """One ``DeQuantStub`` per returned feature map (each keeps its own int8 grid until it leaves)."""
    return nn.ModuleList(DeQuantStub() for _ in range(n))


def dequant_features(dequants: Iterable[nn.Module], features: Iterable[Tensor]) -> list[Tensor]:
    """Each feature map through its own ``DeQuantStub``."""
    return [dq(f) for dq, f in zip(dequants, features)]


def trunc_normal_init(model: nn.Module, std: float) -> nn.Module:
    """torchvision's GoogLeNet/Inception initialisation: conv and Linear weights N(0, ``std``) truncated
    to [-2, 2], BN 1/0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=std, a=-2, b=2)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


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
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
