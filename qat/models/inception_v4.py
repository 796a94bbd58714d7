"""Quantizable Inception v4 (Szegedy et al., AAAI 2017) in timm's ``inception_v4`` layout.

``QuantStub → stem (3×3 s2, 3×3, 3×3 pad 1) → Mixed3a → Mixed4a → Mixed5a → 4 × Inception-A →
Reduction-A → 7 × Inception-B → Reduction-B → 3 × Inception-C → pool → dropout → fc →
DeQuantStub`` (blocks in :mod:`qat.nn.blocks.inception_v4`). 42,679,816 parameters at 1000
classes, equal to timm's ``inception_v4`` (the paper gives no count), parameter for parameter in
the same order. Keyword arguments work as in :mod:`qat.models.base`, except that the unpadded
convs and reductions shrink every map: the ImageNet stem needs at least 75×75 inputs (stage
outputs 73, 35, 17, 8 pixels at 299), and ``stem="cifar"`` (first stem conv and Mixed3a at
stride 1, no parameters change) takes a 32×32 input to 26, 11, 5, 2 pixels.
"""

from __future__ import annotations

from torch import nn

from qat.models.base import FixedStagedClassifier
from qat.models.registry import register_model
from qat.nn.blocks.googlenet import BasicConv2d
from qat.nn.blocks.inception_v4 import (
    InceptionV4A,
    InceptionV4B,
    InceptionV4C,
    Mixed3a,
    Mixed4a,
    Mixed5a,
    ReductionV4A,
    ReductionV4B,
)

__all__ = ["InceptionV4", "inception_v4"]

STAGE_CHANNELS = (160, 384, 1024, 1536)


class InceptionV4(FixedStagedClassifier):
    """Inception v4: four stages ending at Mixed3a, Inception-A ×4, Inception-B ×7 and Inception-C ×3."""

    STAGE_CHANNELS = STAGE_CHANNELS
    DROPOUT = 0.2

    @classmethod
    def build(cls, cifar: bool) -> tuple[nn.Module, list[nn.Module]]:
        stem_mod = nn.Sequential(
            BasicConv2d(3, 32, 3, stride=1 if cifar else 2),
            BasicConv2d(32, 32, 3),
            BasicConv2d(32, 64, 3, padding=1),
        )
        stages = [
            nn.Sequential(Mixed3a(1 if cifar else 2)),
            nn.Sequential(Mixed4a(), Mixed5a(), *(InceptionV4A() for _ in range(4))),
            nn.Sequential(ReductionV4A(), *(InceptionV4B() for _ in range(7))),
            nn.Sequential(ReductionV4B(), *(InceptionV4C() for _ in range(3))),
        ]
        return stem_mod, stages


@register_model
def inception_v4(num_classes: int = 1000, **kwargs) -> InceptionV4:
    """Inception v4: 42,679,816 parameters, equal to timm's ``inception_v4``."""
    return InceptionV4(num_classes=num_classes, **kwargs)
