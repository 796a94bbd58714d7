"""Quantizable ResNets (He et al. 2016): ResNet-18 in torchvision's layout, ResNet-50 v1b / v1d.

``resnet18``: 11,689,512 parameters with the ImageNet stem, equal to ``torchvision.models.resnet18``;
weights load by order. Its ``stem="cifar"`` replaces the 7x7 stride-2 conv and the 3x3 stride-2
max-pool by one 3x3 stride-1 conv (the usual CIFAR ResNet), so the network down-samples 8x: 7,680
fewer parameters (3*64*(49-9)).

``resnet50_v1b`` and ``resnet50_v1d`` follow Bag of Tricks (He et al., CVPR 2019) as timm builds
``resnet50`` and ``resnet50d``: v1b puts the bottleneck's stride on the 3x3 conv (torchvision's
ResNet-50, 25,557,032 parameters); v1d adds the deep stem (three 3x3 convs, 32-32-64) and
average-pool shortcuts (25,576,264). Both equal timm's counts and load its weights by order. Their
``stem="cifar"`` runs the first stem conv at stride 1 and drops the max-pool (no parameters change).
``include_top`` and ``input_scale`` work as in :mod:`qat.models.base`.

``ic_resnet50`` (Liu et al., CVPR 2021) is ResNet-50 v1b with every bottleneck 3x3 conv an
inception convolution (:mod:`qat.nn.blocks.ic_conv`): per-channel-group dilations along H and W.
The paper's searched patterns are not available, so it uses the fixed pattern documented there
(four equal groups, dilations (1, 1), (1, 2), (2, 1), (2, 2)). Dilation adds no parameters:
25,557,032, as ResNet-50 (the paper's IC-ResNet-50: 25.6M).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from qat.models.base import (
    StagedClassifier,
    bottleneck_stages,
    check_stem,
    deep_stem,
    init_weights,
    pooled_head,
    pooled_top,
    stem_conv,
)
from qat.models.registry import register_model
from qat.nn.blocks.ic_conv import FIXED_PATTERN
from qat.nn.blocks.resnet import BasicBlock, Bottleneck
from qat.nn.conv import ConvModule2d

__all__ = ["ResNet", "ic_resnet50", "resnet18", "resnet50_v1b", "resnet50_v1d"]

_PLANES = (64, 128, 256, 512)


@register_model
def resnet18(
    num_classes: int = 1000,
    stem: str = "imagenet",
    include_top: bool = True,
    input_scale: float | None = 1 / 128,
) -> StagedClassifier:
    """ResNet-18: conv stem, four stages of two :class:`BasicBlock` (64-128-256-512), avg-pool, FC."""
    if check_stem(stem):
        stem_mod: nn.Module = ConvModule2d(3, 64, 3, padding=1, norm_layer="bn", act_layer="relu")
    else:
        stem_mod = nn.Sequential(
            ConvModule2d(3, 64, 7, stride=2, padding=3, norm_layer="bn", act_layer="relu"),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    stages, c_in = [], 64
    for i, c in enumerate(_PLANES):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c)))
        c_in = c
    head = classifier = None
    if include_top:
        head = pooled_head()
        classifier = nn.Linear(512, num_classes)
    model = StagedClassifier(stem_mod, stages, _PLANES, head, classifier, input_scale)
    return init_weights(model, linear=None)


class ResNet(StagedClassifier):
    """Bottleneck ResNet: ``layers`` blocks per stage; ``deep`` stem + ``avg_down`` make it a ResNet-D,
    ``dilations`` (one (H, W) pair per channel group) turns every 3x3 conv into an inception convolution."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        deep: bool = False,
        avg_down: bool = False,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.0,
        dilations: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        if len(layers) != 4:
            raise ValueError(f"layers needs 4 block counts, got {len(layers)}")
        cifar = check_stem(stem)
        if deep:
            stem_mod = deep_stem(32, cifar)
        else:
            stem_mod = nn.Sequential(
                stem_conv(64, cifar, "relu", kernel_size=7, bias=False),
                nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1),
            )
        stages, channels = bottleneck_stages(
            lambda c_in, planes, stride: Bottleneck(c_in, planes, stride, avg_down, dilations),
            layers,
            _PLANES,
            64,
            Bottleneck.expansion,
        )
        head, classifier = pooled_top(include_top, channels[-1], num_classes, dropout)
        super().__init__(stem_mod, stages, channels, head, classifier, input_scale)
        init_weights(self, linear=None)


@register_model
def resnet50_v1b(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50 v1b: 25,557,032 parameters, equal to timm's ``resnet50`` and torchvision's ``resnet50``."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model
def resnet50_v1d(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50 v1d (deep stem, average-pool shortcuts): 25,576,264 parameters, equal to timm's ``resnet50d``."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, deep=True, avg_down=True, **kwargs)


@register_model
def ic_resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """IC-ResNet-50 with the fixed dilation pattern: 25,557,032 parameters, as ResNet-50 (paper: 25.6M)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, dilations=FIXED_PATTERN, **kwargs)
