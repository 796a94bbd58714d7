"""Quantizable MobileNetV2 with Coordinate Attention, ECA, triplet or shuffle attention in its inverted residual blocks.

Layout of torchvision's MobileNetV2 (``QuantStub → 3×3 conv s2 → 17 inverted residuals → 1×1 conv
(1280) → pool → dropout → fc → DeQuantStub``, ReLU6 fused exactly) with the attention placed as in
the authors' code: coordinate attention (houqb/CoordAttention) on the expanded features after the
depthwise conv of every block with expansion > 1; ECA (BangguWu/ECANet) on every block's projected
output, 1 tap for blocks of <= 96 channels and 3 taps above; triplet attention
(landskape-ai/triplet-attention ``MODELS/mobilenet.py``) on every block's projected output with
3×3 gate convs (its released "k = 3" model); shuffle attention on every block's projected output,
where SA-ResNet puts it (after the last BN, before the residual add), with 4 groups: the SA paper
publishes no MobileNetV2 and its 64 groups do not divide MobileNetV2's widths; 4 is the largest
count that splits every width (16-320) into pairs of halves. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the stem conv *and* the first stride-2 block (16 → 24 channels) get stride 1
  (no parameters change), so the network down-samples 8× instead of 32× and a 32×32 input ends
  on a 4×4 map;
- ``include_top=False``: no 1280 conv/classifier; ``forward`` returns the four stage outputs
  (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from torch import nn

from qat.models.base import StagedClassifier, check_stem, cifar_strides, pooled_top, split_stages, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.attention import InvertedResidualAttention
from qat.nn.se import make_divisible

__all__ = [
    "MobileNetV2Attention",
    "mobilenet_v2_ca",
    "mobilenet_v2_eca",
    "mobilenet_v2_sa",
    "mobilenet_v2_triplet",
]

# (expansion t, out channels c, repeats n, stride s) -- the MobileNetV2 paper's table 2.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2Attention(StagedClassifier):
    """MobileNetV2 whose blocks carry ``attention="ca"``, ``"eca"``, ``"triplet"`` or ``"sa"`` (see the module docstring)."""

    def __init__(
        self,
        attention: str,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.2,
    ) -> None:
        cifar = check_stem(stem)
        if attention not in ("ca", "eca", "triplet", "sa"):
            raise ValueError(f"attention must be 'ca', 'eca', 'triplet' or 'sa', got {attention!r}")
        c = make_divisible(32 * width_mult, 8)
        stem_mod = stem_conv(c, cifar, "relu6")
        specs = [(t, c_cfg, s if i == 0 else 1) for t, c_cfg, n, s in _SETTINGS for i in range(n)]
        blocks = []
        for (t, c_cfg, _), stride in zip(specs, cifar_strides([s for *_, s in specs], cifar)):
            out = make_divisible(c_cfg * width_mult, 8)
            block_attention = attention if (attention != "ca" or t != 1) else None
            eca_kernel = 1 if c_cfg <= 96 else 3
            blocks.append(InvertedResidualAttention(c, out, stride, t, block_attention, eca_kernel=eca_kernel))
            c = out
        pre, stages = split_stages(blocks, [s == 2 for *_, s in specs])
        last = make_divisible(1280 * max(1.0, width_mult), 8)
        head, classifier = pooled_top(include_top, c, num_classes, dropout, head_channels=last, act_layer="relu6")
        channels = [stage[-1].project.conv.out_channels for stage in stages]
        super().__init__(nn.Sequential(stem_mod, *pre), stages, channels, head, classifier, input_scale)


@register_model
def mobilenet_v2_ca(num_classes: int = 1000, **kwargs) -> MobileNetV2Attention:
    """MobileNetV2 + coordinate attention: 3,950,408 parameters vs the CA paper's 3.95M (equal at its
    precision; the reference code has 240 more: the conv bias before each CA's BN, dropped here)."""
    return MobileNetV2Attention("ca", num_classes=num_classes, **kwargs)


@register_model
def mobilenet_v2_eca(num_classes: int = 1000, **kwargs) -> MobileNetV2Attention:
    """MobileNetV2 + ECA: 3,504,897 parameters (torchvision's mobilenet_v2 + 25 ECA taps) vs the 3.34M
    the ECA authors list for ECA-MobileNetV2: +4.9 %, the same layers counted differently."""
    return MobileNetV2Attention("eca", num_classes=num_classes, **kwargs)


@register_model
def mobilenet_v2_triplet(num_classes: int = 1000, **kwargs) -> MobileNetV2Attention:
    """MobileNetV2 + triplet attention (3×3 gates): 3,505,892 parameters, equal to the reference code's
    (torchvision's mobilenet_v2 + 17 × 60 gate parameters; its README: 3.506M)."""
    return MobileNetV2Attention("triplet", num_classes=num_classes, **kwargs)


@register_model
def mobilenet_v2_sa(num_classes: int = 1000, **kwargs) -> MobileNetV2Attention:
    """MobileNetV2 + shuffle attention (4 groups): 3,506,000 parameters, torchvision's mobilenet_v2 + 1,128
    (3·C/4 per block; no published MobileNetV2-SA count: SA-Net-50 adds 300 to ResNet-50)."""
    return MobileNetV2Attention("sa", num_classes=num_classes, **kwargs)
