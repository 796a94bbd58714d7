"""Quantizable Inception v3 (Szegedy et al., CVPR 2016) in torchvision's layout.

``QuantStub → Conv2d_1a (3×3 s2) → 2a (3×3) → 2b (3×3, pad 1) → maxpool1 → 3b (1×1) → 4a (3×3) →
maxpool2 → Mixed_5b-d (InceptionA) → Mixed_6a (B) → Mixed_6b-e (C) → Mixed_7a (D) → Mixed_7b/c (E)
→ pool → dropout → fc → DeQuantStub``, module names as ``torchvision.models.inception_v3`` (convs
``BasicConv2d``: no bias, BN eps 1e-3, ReLU; ``bn`` → ``norm``). 23,834,568 parameters at 1000
classes: torchvision's ``inception_v3(aux_logits=False)`` exactly (its 27,161,264 include the
auxiliary classifier, a training-only head not carried over, like ``transform_input``). Keyword
arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: Conv2d_1a gets stride 1 and maxpool1 is dropped (no parameters change); the
  unpadded convs and reductions still shrink the map, so a 32×32 input ends on 2×2 (the ImageNet
  stem needs at least 75×75, as torchvision's);
- ``include_top=False``: no pool/fc; ``forward`` returns the outputs of Conv2d_4a, Mixed_5d,
  Mixed_6e and Mixed_7c (192, 288, 768, 2048 channels; at 299×299: 71, 35, 17, 8 pixels), one
  ``DeQuantStub`` each.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.models.base import NamedStagesClassifier
from qat.models.registry import register_model
from qat.nn.blocks.googlenet import BasicConv2d
from qat.nn.blocks.inception_v3 import InceptionA, InceptionB, InceptionC, InceptionD, InceptionE

__all__ = ["InceptionV3", "inception_v3"]


class InceptionV3(NamedStagesClassifier):
    """Inception v3 without the auxiliary classifier; torchvision's initialisation (trunc-normal σ 0.1)."""

    FEATURE_CHANNELS = (192, 288, 768, 2048)
    DROPOUT = 0.5
    INIT_STD = 0.1

    def build(self, cifar: bool) -> None:
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=1 if cifar else 2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.Identity() if cifar else nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(192, 32)
        self.Mixed_5c = InceptionA(256, 64)
        self.Mixed_5d = InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128)
        self.Mixed_6c = InceptionC(768, 160)
        self.Mixed_6d = InceptionC(768, 160)
        self.Mixed_6e = InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)

    def stages_forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        f4 = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        f5 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(self.maxpool2(f4))))
        f6 = self.Mixed_6a(f5)
        for block in (self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            f6 = block(f6)
        f7 = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(f6)))
        return [f4, f5, f6, f7]


@register_model
def inception_v3(num_classes: int = 1000, **kwargs) -> InceptionV3:
    """Inception v3: 23,834,568 parameters, equal to ``torchvision.models.inception_v3(aux_logits=False)``."""
    return InceptionV3(num_classes=num_classes, **kwargs)
