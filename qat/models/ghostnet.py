"""Quantizable GhostNet (Han et al., 2020), in the layout of the official / timm ``ghostnet_100``.

``QuantStub → conv_stem (3×3 s2) → 16 ghost bottlenecks → 1×1 conv (960) → pool → conv_head
(1×1, 1280, ReLU) → dropout → classifier → DeQuantStub``. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the stem conv *and* the first stride-2 bottleneck (16 → 24 channels) get
  stride 1 (no parameters change), so the network down-samples 8× instead of 32× and a 32×32
  input ends on a 4×4 map;
- ``include_top=False``: no 960/1280 head convs and no classifier; ``forward`` returns the four
  stage outputs (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from torch import nn

from qat.models.base import StagedClassifier, check_stem, cifar_strides, classifier_head, split_stages, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.ghost import GhostBottleneck
from qat.nn.conv import ConvModule2d
from qat.nn.se import make_divisible

__all__ = ["GhostNet", "ghostnet_x0_5", "ghostnet_x1_0", "ghostnet_x1_3"]

# One tuple per bottleneck: (kernel, expanded, out, se_ratio, stride) -- the paper's table 1.
_CFG = (
    (3, 16, 16, 0.0, 1),
    (3, 48, 24, 0.0, 2),
    (3, 72, 24, 0.0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0.0, 2),
    (3, 200, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 184, 80, 0.0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0.0, 1),
    (5, 960, 160, 0.25, 1),
)


class GhostNet(StagedClassifier):
    """GhostNet at ``width`` (channels ``make_divisible(c·width, 4)``, as the reference).

    Parameters at 1000 classes: see the registered ``ghostnet_x0_5``, ``ghostnet_x1_0`` and
    ``ghostnet_x1_3``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.2,
    ) -> None:
        cifar = check_stem(stem)
        c = make_divisible(16 * width, 4)
        conv_stem = stem_conv(c, cifar, "relu")
        nominal = [s for *_, s in _CFG]
        blocks = []
        for (k, exp, out, se, s), stride in zip(_CFG, cifar_strides(nominal, cifar)):
            mid, out = make_divisible(exp * width, 4), make_divisible(out * width, 4)
            blocks.append(GhostBottleneck(c, mid, out, k, stride, se, dw_conv=s > 1))
            c = out
        pre, stages = split_stages(blocks, [s == 2 for s in nominal])
        head = classifier = None
        if include_top:
            last = make_divisible(960 * width, 4)
            head = nn.Sequential(
                ConvModule2d(c, last, 1, norm_layer="bn", act_layer="relu"),
                nn.AdaptiveAvgPool2d(1),
                ConvModule2d(last, 1280, 1, act_layer="relu"),
                nn.Flatten(1),
            )
            classifier = classifier_head(1280, num_classes, dropout)
        channels = [stage[-1].ghost2.out_channels for stage in stages]
        super().__init__(nn.Sequential(conv_stem, *pre), stages, channels, head, classifier, input_scale)


@register_model
def ghostnet_x1_0(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 1.0×: 5,182,508 parameters vs the paper's 5.2M (0.3 % below; the paper rounds to 0.1M)."""
    return GhostNet(num_classes=num_classes, width=1.0, **kwargs)


@register_model
def ghostnet_x0_5(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 0.5×: 2,587,292 parameters vs the paper's 2.6M (table 7; -0.5 %, rounding)."""
    return GhostNet(num_classes=num_classes, width=0.5, **kwargs)


@register_model
def ghostnet_x1_3(num_classes: int = 1000, **kwargs) -> GhostNet:
    """GhostNet 1.3×: 7,358,820 parameters vs the paper's 7.3M (table 7; +0.8 %, rounding)."""
    return GhostNet(num_classes=num_classes, width=1.3, **kwargs)
