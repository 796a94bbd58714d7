"""Quantizable MobileViT (Mehta & Rastegari, 2022), v1 XXS/XS/S in the layout of timm's ``mobilevit_*``.

``QuantStub → stem (3×3 s2 conv-BN-SiLU, 16) → MobileNetV2 block (s1) → 3 MobileNetV2 blocks (first
s2) → 3 × [MobileNetV2 block (s2) + MobileViTBlock] → 1×1 conv-BN-SiLU (320/384/640) → pool →
dropout → fc → DeQuantStub``. Inverted residuals expand ×2 (XXS) or ×4 (XS, S) and use SiLU; every
MobileViT block unfolds 2×2 patches and runs 2, 4, 3 transformer layers (4 heads, MLP ×2).
Layers, widths and order equal timm's ``mobilevit_xxs/xs/s`` (apple/ml-cvnets' configs).

Parameters at 1000 classes: ``mobilevit_xxs`` 1,272,024, ``mobilevit_xs`` 2,317,848,
``mobilevit_s`` 5,578,632 -- timm's published 1.27M / 2.32M / 5.58M and the paper's 1.3M / 2.3M /
5.6M (rounding only). Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the stem conv *and* the first stride-2 block get stride 1 (no parameters
  change), so the network down-samples 8× instead of 32×; a 32×32 input reaches the MobileViT
  blocks at 16, 8 and 4 pixels, all multiples of the 2×2 patch. At 224 (ImageNet stem) the last
  block sees 7×7 and resizes to 8×8 and back (timm's behaviour; MobileViT was trained at 256);
- ``dropout`` (0.1): before the classifier, as ml-cvnets' ``classifier_dropout`` (timm: 0);
- ``include_top=False``: no 1×1 head conv and no classifier; ``forward`` returns the four stage
  outputs (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.

int8: attention is ``MatMul`` + torch's int8 softmax (fixed 1/256 grid; with many tokens, e.g. 196
at 224 input, near-uniform attention weights sit on few grid steps), LayerNorm an int8-in/int8-out
op rounded exactly as fake-quant (``nn.LayerNorm``'s policy in ``qat.quant.int8_ops``), SiLU
``x·sigmoid(x)``, residuals ``qat.nn.Add``.
"""

from __future__ import annotations

from collections.abc import Sequence

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
from qat.nn.blocks.mobilenet import InvertedResidual
from qat.nn.blocks.mobilevit import MobileViTBlock

__all__ = ["MOBILEVIT_CONFIGS", "MobileViT", "mobilevit_s", "mobilevit_xs", "mobilevit_xxs"]

_STEM = 16
_DEPTHS = (2, 4, 3)  # transformer layers in the three MobileViT blocks
# name: (expansion, (stage0, stage1, stage2, stage3, stage4) channels, transformer dims, head channels)
MOBILEVIT_CONFIGS: dict[str, tuple[float, tuple[int, ...], tuple[int, ...], int]] = {
    "xxs": (2.0, (16, 24, 48, 64, 80), (64, 80, 96), 320),
    "xs": (4.0, (32, 48, 64, 80, 96), (96, 120, 144), 384),
    "s": (4.0, (32, 64, 96, 128, 160), (144, 192, 240), 640),
}


class MobileViT(StagedClassifier):
    """MobileViT v1 from ``expansion``, five stage widths, three transformer widths and the head width."""

    def __init__(
        self,
        expansion: float,
        channels: Sequence[int],
        transformer_dims: Sequence[int],
        head_channels: int,
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.1,
        patch_size: int = 2,
        num_heads: int = 4,
    ) -> None:
        cifar = check_stem(stem)
        if len(channels) != 5 or len(transformer_dims) != 3:
            raise ValueError("MobileViT needs 5 stage widths and 3 transformer widths")
        stem_mod = stem_conv(_STEM, cifar, "silu")
        # (out, stride, transformer dim, depth) per block (dim 0: inverted residual); in stages 2-4 a
        # MobileViT block follows the stride-2 inverted residual
        specs = [(channels[0], 1, 0, 0), (channels[1], 2, 0, 0), (channels[1], 1, 0, 0), (channels[1], 1, 0, 0)]
        for c, dim, depth in zip(channels[2:], transformer_dims, _DEPTHS):
            specs += [(c, 2, 0, 0), (c, 1, dim, depth)]
        nominal = [spec[1] for spec in specs]
        blocks: list[nn.Module] = []
        c_in = _STEM
        for (c_out, _, dim, depth), stride in zip(specs, cifar_strides(nominal, cifar)):
            if dim:
                block = MobileViTBlock(c_in, dim, depth, c_out, patch_size, num_heads)
            else:
                block = InvertedResidual(c_in, c_out, stride, expand_ratio=expansion, act_layer="silu")
            blocks.append(block)
            c_in = c_out
        pre, stages = split_stages(blocks, [s == 2 for s in nominal])
        head, classifier = pooled_top(include_top, c_in, num_classes, dropout, head_channels=head_channels, act_layer="silu")
        super().__init__(nn.Sequential(stem_mod, *pre), stages, channels[1:], head, classifier, input_scale)
        init_weights(self)


def _build(name: str, num_classes: int, **kwargs) -> MobileViT:
    expansion, channels, dims, head = MOBILEVIT_CONFIGS[name]
    return MobileViT(expansion, channels, dims, head, num_classes=num_classes, **kwargs)


@register_model
def mobilevit_xxs(num_classes: int = 1000, **kwargs) -> MobileViT:
    """MobileViT-XXS: 1,272,024 parameters vs timm's 1.27M (paper 1.3M); expansion 2, head 320."""
    return _build("xxs", num_classes, **kwargs)


@register_model
def mobilevit_xs(num_classes: int = 1000, **kwargs) -> MobileViT:
    """MobileViT-XS: 2,317,848 parameters vs timm's 2.32M (paper 2.3M); expansion 4, head 384."""
    return _build("xs", num_classes, **kwargs)


@register_model
def mobilevit_s(num_classes: int = 1000, **kwargs) -> MobileViT:
    """MobileViT-S: 5,578,632 parameters vs timm's 5.58M (paper 5.6M); expansion 4, head 640."""
    return _build("s", num_classes, **kwargs)
