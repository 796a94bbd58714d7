"""Quantizable ESPNet v1 (Mehta et al., ECCV 2018): the ESPNet-C encoder and the ESPNet segmenter.

``ESPNetEncoder``: ``level1 (3×3 s2 conv-BN-PReLU) ⊕ image/2 → BN-PReLU → ESP s2 → p × ESP ⊕
(its input) ⊕ image/4 → BN-PReLU → ESP s2 → q × ESP ⊕ (its input) → BN-PReLU``, where ``⊕`` is
a channel concat and ``image/k`` the input image average-pooled (3×3, stride 2) to that size.
Features at strides 2, 4 and 8 with 19, 131 and 256 channels.

- :class:`ESPNetC` (registered as ``espnet_c``) is the paper's ESPNet-C: the encoder and its
  1×1 classifier conv. The authors' code applies the classifier to the stride-8 map for
  segmentation; here it runs after a global average pool, which for a bias-free 1×1 conv is
  the same function (pool and conv are both linear) at 1/784 of the classifier's MACs at 224².
  ``include_top=False`` returns the three features; ``stem="cifar"`` runs level1 at stride 1
  (features at strides 1, 2, 4; the image pyramid starts one level lower, no parameter changes).
- :class:`ESPNet` is the full segmenter: the encoder plus the authors' light decoder (reverse
  up-sampling modules), per-pixel logits at the input size. Its 2×2 stride-2 transposed convs
  are :class:`~qat.nn.PixelShuffleUp` (the same function and parameters; ``from_conv_transpose``
  loads trained ones). It is not in the classification registry ``train.py`` draws from; build
  it directly and quantize it with ``qat.quant`` like any model.

Parameter counts equal the authors' code (``sacmehta/ESPNet``, ``train/Model.py``): ESPNet-C
at p=2, q=8 and 1000 classes 600,329; ESPNet at p=2, q=8 and its default 20 classes 365,109
(the paper's 0.364M). BN eps is 1e-3 as there.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants, init_weights
from qat.models.registry import register_model
from qat.nn.blocks.common import batch_norm
from qat.nn.blocks.espnet import ESP, BNPReLU
from qat.nn.conv import ConvModule2d, PixelShuffleUp
from qat.nn.functional import Cat
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = ["ESPNet", "ESPNetC", "ESPNetEncoder", "espnet_c"]

_WIDTHS = (16, 64, 128)  # level1, level2, level3 output channels of the authors' code
_IMAGE = 3


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, prelu: bool = True) -> ConvModule2d:
    """The authors' ``CBR`` (or ``CB`` without ``prelu``): bias-free conv → BN (eps 1e-3) → PReLU."""
    act = nn.PReLU(cout) if prelu else None
    return ConvModule2d(cin, cout, k, stride, k // 2, bias=False, norm_layer=batch_norm(cout, eps=1e-3), act_layer=act)


class ESPNetEncoder(nn.Module):
    """ESPNet-C without its classifier: a quantized image in, features at strides 2, 4, 8 out.

    ``p`` and ``q`` are the numbers of ESP modules at levels 2 and 3 (the paper's depth
    multipliers). With ``cifar`` level1 keeps the input resolution.
    """

    def __init__(self, p: int = 2, q: int = 8, cifar: bool = False) -> None:
        super().__init__()
        if p < 1 or q < 1:
            raise ValueError(f"ESPNet needs at least one ESP module per level, got p={p}, q={q}")
        c1, c2, c3 = _WIDTHS
        self.level1 = _conv_bn(_IMAGE, c1, 3, 1 if cifar else 2)
        # Image copies at the sizes of levels 1 and 2: with the ImageNet stem the first sits at
        # stride 2 (one pool), with the CIFAR stem at stride 1 (the image itself).
        self.image_pools = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(1 if cifar else 2))
        self.cat1, self.cat2, self.cat3 = Cat(dim=1), Cat(dim=1), Cat(dim=1)
        self.b1 = BNPReLU(c1 + _IMAGE)
        self.level2_0 = ESP(c1 + _IMAGE, c2, stride=2)
        self.level2 = nn.Sequential(*(ESP(c2, c2) for _ in range(p)))
        self.b2 = BNPReLU(2 * c2 + _IMAGE)
        self.level3_0 = ESP(2 * c2 + _IMAGE, c3, stride=2)
        self.level3 = nn.Sequential(*(ESP(c3, c3) for _ in range(q)))
        self.b3 = BNPReLU(2 * c3)
        self.feature_channels = [c1 + _IMAGE, 2 * c2 + _IMAGE, 2 * c3]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        images = [x]
        for pool in self.image_pools:
            images.append(pool(images[-1]))
        f1 = self.b1(self.cat1([self.level1(x), images[-2]]))
        down2 = self.level2_0(f1)
        f2 = self.b2(self.cat2([self.level2(down2), down2, images[-1]]))
        down3 = self.level3_0(f2)
        f3 = self.b3(self.cat3([down3, self.level3(down3)]))
        return f1, f2, f3


class ESPNetC(nn.Module):
    """ESPNet-C as a classifier: encoder → global average pool → bias-free 1×1 conv → logits."""

    def __init__(
        self,
        num_classes: int = 1000,
        p: int = 2,
        q: int = 8,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
    ) -> None:
        super().__init__()
        self.quant = QuantStub(scale=input_scale)
        self.encoder = ESPNetEncoder(p, q, check_stem(stem))
        self.feature_channels = list(self.encoder.feature_channels)
        self.include_top = include_top
        if include_top:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Conv2d(self.feature_channels[-1], num_classes, 1, bias=False)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(len(self.feature_channels))
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        features = self.encoder(self.quant(x))
        if self.include_top:
            return self.dequant(torch.flatten(self.classifier(self.pool(features[-1])), 1))
        return dequant_features(self.dequants, features)


class ESPNet(nn.Module):
    """ESPNet: the ESPNet-C encoder and the authors' decoder, ``[N, num_classes, H, W]`` logits.

    Decoder: stride-8 class map (1×1 conv-BN) up ×2 ⊕ a 1×1 projection of the stride-4
    features → BN-PReLU → ESP (no residual) → up ×2 → BN-PReLU ⊕ the stride-2 features →
    3×3 conv-BN-PReLU → up ×2. ``H`` and ``W`` must be multiples of 8.
    """

    def __init__(self, num_classes: int = 20, p: int = 2, q: int = 8, input_scale: float | None = 1 / 128) -> None:
        super().__init__()
        self.quant = QuantStub(scale=input_scale)
        self.encoder = ESPNetEncoder(p, q)
        c1, c2, c3 = self.encoder.feature_channels
        self.classifier = _conv_bn(c3, num_classes, 1, prelu=False)
        self.up3 = PixelShuffleUp(num_classes, num_classes)
        self.project2 = nn.Conv2d(c2, num_classes, 1, bias=False)
        self.cat2 = Cat(dim=1)
        self.combine2 = nn.Sequential(BNPReLU(2 * num_classes), ESP(2 * num_classes, num_classes, residual=False))
        self.up2 = nn.Sequential(PixelShuffleUp(num_classes, num_classes), BNPReLU(num_classes))
        self.cat1 = Cat(dim=1)
        self.combine1 = _conv_bn(c1 + num_classes, num_classes, 3)
        self.up1 = PixelShuffleUp(num_classes, num_classes)
        self.dequant = DeQuantStub()
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % 8 or x.shape[-1] % 8:
            raise ValueError(f"ESPNet needs H and W divisible by 8 (three 2x up-samplings), got {tuple(x.shape[-2:])}")
        f1, f2, f3 = self.encoder(self.quant(x))
        y = self.cat2([self.project2(f2), self.up3(self.classifier(f3))])
        y = self.up2(self.combine2(y))
        y = self.combine1(self.cat1([y, f1]))
        return self.dequant(self.up1(y))


@register_model
def espnet_c(num_classes: int = 1000, **kwargs) -> ESPNetC:
    """ESPNet-C at p=2, q=8 (the authors' training default): 600,329 parameters at 1000 classes, as their code."""
    return ESPNetC(num_classes=num_classes, **kwargs)
