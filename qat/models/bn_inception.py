"""Quantizable BN-Inception (Inception v2; Ioffe & Szegedy, ICML 2015), the paper's table 1.

``QuantStub → 7×7 s2 conv → 3×3 s2 max-pool → 1×1 conv (64) → 3×3 conv (192) → 3×3 s2 max-pool →
inception 3a, 3b, 3c (s2), 4a-4d, 4e (s2), 5a, 5b → pool → dropout → fc → DeQuantStub``, BN + ReLU
after every conv, max-pools in ceil mode (module: :class:`qat.nn.blocks.bn_inception.BNInceptionModule`).
Layers and widths are those of the released Caffe model as ported to PyTorch (Cadene's
``pretrainedmodels.bninception``): 11,295,240 parameters there at 1000 classes; 11,285,224 here,
the difference (10,016) being its conv biases before each BN, which BN's shift makes redundant.
Keyword arguments work as in :mod:`qat.models.base`; ``stem="cifar"`` runs the 7×7 conv at
stride 1 and drops the first max-pool (no parameters change). Stage outputs: conv2 (192), 3b (320),
4d (608), 5b (1024) channels at strides 4, 8, 16, 32.
"""

from __future__ import annotations

from torch import nn

from qat.models.base import FixedStagedClassifier, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.bn_inception import BNInceptionModule, conv_bn_relu

__all__ = ["BNInception", "bn_inception"]

# (in, 1x1, 3x3 reduce, 3x3, double 3x3 reduce, double 3x3, pool proj, stride) -- the paper's table 1
_MODULES = {
    "3a": (192, 64, 64, 64, 64, 96, 32, 1),
    "3b": (256, 64, 64, 96, 64, 96, 64, 1),
    "3c": (320, 0, 128, 160, 64, 96, 0, 2),
    "4a": (576, 224, 64, 96, 96, 128, 128, 1),
    "4b": (576, 192, 96, 128, 96, 128, 128, 1),
    "4c": (576, 160, 128, 160, 128, 160, 128, 1),
    "4d": (608, 96, 128, 192, 160, 192, 128, 1),
    "4e": (608, 0, 128, 192, 192, 256, 0, 2),
    "5a": (1056, 352, 192, 320, 160, 224, 128, 1),
    "5b": (1024, 352, 192, 320, 192, 224, 128, 1),
}
STAGE_CHANNELS = (192, 320, 608, 1024)


def _modules(*names: str) -> list[nn.Module]:
    return [BNInceptionModule(*_MODULES[n], max_pool=n == "5b") for n in names]


class BNInception(FixedStagedClassifier):
    """BN-Inception; stages end at conv2, inception 3b, 4d and 5b."""

    STAGE_CHANNELS = STAGE_CHANNELS

    @classmethod
    def build(cls, cifar: bool) -> tuple[nn.Module, list[nn.Module]]:
        stem_mod = nn.Sequential(
            stem_conv(64, cifar, "relu", kernel_size=7), nn.Identity() if cifar else nn.MaxPool2d(3, 2, ceil_mode=True)
        )
        stages = [
            nn.Sequential(conv_bn_relu(64, 64, 1), conv_bn_relu(64, 192, 3)),
            nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), *_modules("3a", "3b")),
            nn.Sequential(*_modules("3c", "4a", "4b", "4c", "4d")),
            nn.Sequential(*_modules("4e", "5a", "5b")),
        ]
        return stem_mod, stages


@register_model
def bn_inception(num_classes: int = 1000, **kwargs) -> BNInception:
    """BN-Inception: 11,285,224 parameters; the Caffe reference's 11,295,240 include 10,016 conv biases before BN."""
    return BNInception(num_classes=num_classes, **kwargs)
