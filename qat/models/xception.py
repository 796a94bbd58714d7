"""Quantizable Xception (Chollet, 2017) in the layout of Cadene's / timm's ``xception`` (``legacy_xception``).

``QuantStub → conv1 (3×3 s2, 32) → conv2 (3×3, 64) → entry flow (3 blocks: 128, 256, 728, each
down-sampling by a 3×3 s2 max-pool with a 1×1 s2 conv+BN shortcut) → middle flow (8 blocks of
three ReLU → SeparableConv(728) → BN, identity residual) → exit flow (728 → 1024 block, then
separable 1536 and 2048 with BN+ReLU) → global pool → fc → DeQuantStub``. Both stem convs are
unpadded, as in the reference. 22,855,952 parameters at 1000 classes, equal to the reference
(Keras' Xception and timm's ``legacy_xception``), with the same parameter tensors in the same
order. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: conv1 runs at stride 1, both stem convs get padding 1 (so 32×32 stays 32×32)
  and the first entry-flow block runs at stride 1 (its max-pool is dropped, its shortcut conv
  keeps stride 1); no parameters change. The network down-samples 8× instead of 32× and a
  32×32 input ends on a 4×4 map;
- ``include_top=False``: no pool/fc; ``forward`` returns four stage outputs, one ``DeQuantStub``
  each: entry blocks 1 and 2 (128, 256 channels), entry block 3 + middle flow (728) and the
  exit flow (2048) -- strides 4, 8, 16, 32 (sizes 55, 28, 14, 7 at 224×224, the unpadded stem
  losing a few pixels); with the CIFAR stem 1, 2, 4, 8 (32, 16, 8, 4 at 32×32).

int8: every conv+BN(+ReLU) fuses; the ReLU opening each block runs standalone on the int8
residual sum (see :mod:`qat.nn.blocks.xception`).
"""

from __future__ import annotations

from torch import nn

from qat.models.base import FixedStagedClassifier, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.xception import SeparableConvBN, XceptionBlock
from qat.nn.conv import ConvModule2d

__all__ = ["STAGE_CHANNELS", "Xception"]

#: Output channels of the four stages (entry 1, entry 2, entry 3 + middle, exit).
STAGE_CHANNELS = (128, 256, 728, 2048)
_MIDDLE_BLOCKS = 8


class Xception(FixedStagedClassifier):
    """Xception: deep stack of depthwise-separable convs with residual connections."""

    STAGE_CHANNELS = STAGE_CHANNELS

    @classmethod
    def build(cls, cifar: bool) -> tuple[nn.Module, list[nn.Module]]:
        pad = 1 if cifar else 0
        stem_mod = nn.Sequential(
            stem_conv(32, cifar, "relu", padding=pad, bias=False),
            ConvModule2d(32, 64, 3, 1, pad, bias=False, norm_layer="bn", act_layer="relu"),
        )
        stages = [
            nn.Sequential(XceptionBlock(64, 128, 2, 1 if cifar else 2, start_with_relu=False)),
            nn.Sequential(XceptionBlock(128, 256, 2, 2)),
            nn.Sequential(XceptionBlock(256, 728, 2, 2), *(XceptionBlock(728, 728, 3) for _ in range(_MIDDLE_BLOCKS))),
            nn.Sequential(
                XceptionBlock(728, 1024, 2, 2, grow_first=False),
                SeparableConvBN(1024, 1536, act_layer="relu"),
                SeparableConvBN(1536, 2048, act_layer="relu"),
            ),
        ]
        return stem_mod, stages


@register_model
def xception(num_classes: int = 1000, **kwargs) -> Xception:
    """Xception: 22,855,952 parameters at 1000 classes, equal to Keras' / timm's ``legacy_xception``."""
    return Xception(num_classes=num_classes, **kwargs)
