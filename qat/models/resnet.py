"""Quantizable ResNet-18 (He et al. 2016), torchvision's layout.

11,689,512 parameters with the ImageNet stem, equal to ``torchvision.models.resnet18``; weights
load by order. ``stem="cifar"`` replaces the 7x7 stride-2 conv and the 3x3 stride-2 max-pool by
one 3x3 stride-1 conv (the usual CIFAR ResNet), so the network down-samples 8x: 7,680 fewer
parameters (3*64*(49-9)). ``include_top`` and ``input_scale`` work as in :mod:`qat.models.mobilenet`.
"""

from __future__ import annotations

from torch import nn

from qat.models.mobilenet import StagedClassifier, check_stem, init_weights
from qat.models.registry import register_model
from qat.nn.blocks.resnet import BasicBlock
from qat.nn.conv import ConvModule2d

__all__: list[str] = []


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
    widths = (64, 128, 256, 512)
    stages, c_in = [], 64
    for i, c in enumerate(widths):
        stride = 1 if i == 0 else 2
        stages.append(nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c)))
        c_in = c
    head = classifier = None
    if include_top:
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        classifier = nn.Linear(512, num_classes)
    model = StagedClassifier(stem_mod, stages, widths, head, classifier, input_scale)
    return init_weights(model, linear=None)
