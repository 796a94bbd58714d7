"""Quantizable EfficientNet B0-B7 (Tan & Le 2019), torchvision's layout.

The variants follow the compound scaling rule: B0's stages are widened by ``width``
(channels ``make_divisible(c * width, 8)``), deepened by ``depth`` (``ceil(n * depth)`` blocks per
stage) and meant for inputs of ``resolution`` pixels; dropout before the classifier grows with
them. The (width, depth, resolution, dropout) table is torchvision's; B5-B7 use BN eps 1e-3 and
momentum 0.01 like torchvision. Stochastic depth grows linearly from 0 to ``drop_path`` (0.2)
over the blocks. Parameter counts equal torchvision's for every variant (B0: 5,288,548) and
weights load by order. ``stem``, ``include_top`` and ``input_scale`` work as in
:mod:`qat.models.base` (``"cifar"``: stem conv and first stride-2 MBConv at stride 1).
"""

from __future__ import annotations

import math
from functools import partial

from torch import nn

from qat.models.base import (
    StagedClassifier,
    check_stem,
    cifar_strides,
    init_weights,
    pooled_top,
    split_stages,
    stem_conv,
)
from qat.models.registry import register_model
from qat.nn.blocks.common import batch_norm
from qat.nn.blocks.efficientnet import MBConv
from qat.nn.se import make_divisible

__all__ = ["EFFICIENTNET_SCALING"]

# B0 stages: (expand ratio, kernel, stride, in channels, out channels, blocks)
_B0 = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)

_TF_BN = ("efficientnet_b5", "efficientnet_b6", "efficientnet_b7")  # torchvision: BN eps 1e-3, momentum 0.01

#: variant -> (width, depth, resolution, dropout)
EFFICIENTNET_SCALING: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}


def _efficientnet(
    variant: str,
    num_classes: int,
    stem: str,
    include_top: bool,
    input_scale: float | None,
    dropout: float | None,
    drop_path: float,
) -> StagedClassifier:
    width, depth, resolution, default_dropout = EFFICIENTNET_SCALING[variant]
    cifar = check_stem(stem)
    bn_eps, bn_momentum = (1e-3, 0.01) if variant in _TF_BN else (1e-5, 0.1)

    bn = partial(batch_norm, eps=bn_eps, momentum=bn_momentum)

    stages_cfg = [
        (e, k, s, make_divisible(ci * width, 8), make_divisible(co * width, 8), int(math.ceil(n * depth)))
        for e, k, s, ci, co, n in _B0
    ]
    c_stem = stages_cfg[0][3]
    stem_mod = stem_conv(c_stem, cifar, "silu", norm_layer=bn(c_stem))
    specs = [
        (e, k, c_in if i == 0 else c_out, c_out, s if i == 0 else 1)
        for e, k, s, c_in, c_out, n in stages_cfg
        for i in range(n)
    ]
    nominal = [spec[-1] for spec in specs]
    blocks = [
        MBConv(c_in, c_out, k, stride, e, drop_path=drop_path * i / len(specs), bn_eps=bn_eps, bn_momentum=bn_momentum)
        for i, ((e, k, c_in, c_out, _), stride) in enumerate(zip(specs, cifar_strides(nominal, cifar)))
    ]
    pre, stages = split_stages(blocks, [s == 2 for s in nominal])
    channels = [stage[-1].project.conv.out_channels for stage in stages]
    c_last = stages_cfg[-1][4]
    head, classifier = pooled_top(
        include_top,
        c_last,
        num_classes,
        default_dropout if dropout is None else dropout,
        head_channels=4 * c_last,
        act_layer="silu",
        norm_layer=bn(4 * c_last),
    )
    model = StagedClassifier(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)
    model.default_resolution = resolution
    return init_weights(model, linear="uniform")


def _builder(variant: str):
    width, depth, resolution, dropout = EFFICIENTNET_SCALING[variant]

    def build(
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float | None = None,
        drop_path: float = 0.2,
    ) -> StagedClassifier:
        return _efficientnet(variant, num_classes, stem, include_top, input_scale, dropout, drop_path)

    build.__name__ = build.__qualname__ = variant
    build.__doc__ = (
        f"EfficientNet-{variant[-2:].upper()}: width x{width}, depth x{depth}, {resolution}px inputs, "
        f"dropout {dropout} (``dropout=None``), SiLU + SE MBConvs, torchvision's parameter count."
    )
    return register_model(build)


efficientnet_b0 = _builder("efficientnet_b0")
efficientnet_b1 = _builder("efficientnet_b1")
efficientnet_b2 = _builder("efficientnet_b2")
efficientnet_b3 = _builder("efficientnet_b3")
efficientnet_b4 = _builder("efficientnet_b4")
efficientnet_b5 = _builder("efficientnet_b5")
efficientnet_b6 = _builder("efficientnet_b6")
efficientnet_b7 = _builder("efficientnet_b7")
