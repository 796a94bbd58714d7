"""Quantizable GoogLeNet / Inception v1 (Szegedy et al., 2015) in torchvision's layout.

``QuantStub → conv1 (7×7 s2) → maxpool1 → conv2 (1×1) → conv3 (3×3) → maxpool2 → inception3a/b →
maxpool3 → inception4a-e → maxpool4 → inception5a/b → pool → dropout → fc → DeQuantStub``, every
conv ``BasicConv2d`` (no bias, BN eps 1e-3, ReLU) and every max-pool in ceil mode, as
``torchvision.models.googlenet(aux_logits=False)``: 6,624,904 parameters at 1000 classes, equal to
it, with the same module names except ``bn`` → ``norm``, so its state dict loads after that one
rename and gives its outputs. Not carried over: the two auxiliary classifiers (training-only heads
of the paper, dropped at inference) and ``transform_input`` (a re-normalisation of ImageNet-mean/std
inputs; inputs here come already normalised, to [-1, 1) for the fixed QuantStub grid). Keyword
arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: conv1 gets stride 1 and maxpool1 is dropped (no parameters change), so the
  network down-samples 8× instead of 32× and a 32×32 input ends on a 4×4 map;
- ``include_top=False``: no pool/fc; ``forward`` returns the outputs of conv3, inception3b,
  inception4e and inception5b (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8; 192, 480, 832
  and 1024 channels), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.models.base import NamedStagesClassifier
from qat.models.registry import register_model
from qat.nn.blocks.googlenet import BasicConv2d, Inception

__all__ = ["GoogLeNet", "googlenet"]


class GoogLeNet(NamedStagesClassifier):
    """GoogLeNet without auxiliary classifiers; torchvision's initialisation (trunc-normal σ 0.01)."""

    FEATURE_CHANNELS = (192, 480, 832, 1024)
    DROPOUT = 0.2
    INIT_STD = 0.01

    def build(self, cifar: bool) -> None:
        self.conv1 = BasicConv2d(3, 64, 7, stride=1 if cifar else 2, padding=3)
        self.maxpool1 = nn.Identity() if cifar else nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128)

    def stages_forward(self, x: Tensor) -> list[Tensor]:
        c3 = self.conv3(self.conv2(self.maxpool1(self.conv1(x))))
        i3 = self.inception3b(self.inception3a(self.maxpool2(c3)))
        i4 = self.maxpool3(i3)
        for block in (self.inception4a, self.inception4b, self.inception4c, self.inception4d, self.inception4e):
            i4 = block(i4)
        i5 = self.inception5b(self.inception5a(self.maxpool4(i4)))
        return [c3, i3, i4, i5]


@register_model
def googlenet(num_classes: int = 1000, **kwargs) -> GoogLeNet:
    """GoogLeNet: 6,624,904 parameters, equal to ``torchvision.models.googlenet(aux_logits=False)``."""
    return GoogLeNet(num_classes=num_classes, **kwargs)
