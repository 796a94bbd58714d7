"""Quantizable PP-LCNet (Cui et al., 2021), in PaddleClas's layout.

``QuantStub → 3×3 conv (s2, hardswish) → 13 depthwise-separable blocks (SE in the last two) →
pool → 1×1 conv (1280, no BN) → hardswish → dropout → fc → DeQuantStub``. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the stem conv *and* the first stride-2 block (``blocks3[0]``) get stride 1
  (no parameters change), so the network down-samples 8× instead of 32× and a 32×32 input ends
  on a 4×4 map;
- ``include_top=False``: no pool/last conv/fc; ``forward`` returns the outputs of ``blocks3`` to
  ``blocks6`` (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.lcnet import LCNetBlock
from qat.nn.conv import ConvModule2d
from qat.nn.se import make_divisible
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = [
    "PPLCNet",
    "pp_lcnet_x0_5",
    "pp_lcnet_x1_0",
]

# Per stage, one tuple per block: (kernel, in, out, stride, SE) -- PaddleClas's NET_CONFIG.
_STAGES = (
    ((3, 16, 32, 1, False),),
    ((3, 32, 64, 2, False), (3, 64, 64, 1, False)),
    ((3, 64, 128, 2, False), (3, 128, 128, 1, False)),
    ((3, 128, 256, 2, False), *((5, 256, 256, 1, False),) * 5),
    ((5, 256, 512, 2, True), (5, 512, 512, 1, True)),
)


class PPLCNet(nn.Module):
    """PP-LCNet at ``scale`` (channels ``make_divisible(c·scale, 8)``; the 1280 head stays 1280).

    Parameters at 1000 classes (PaddleClas's table in brackets): 0.25 → 1,521,184 (1.5M), 0.35 →
    1,643,090 (1.6M), 0.75 → 2,357,008 (2.4M), 1.5 → 4,499,832 (4.5M), 2.0 → 6,521,512 (6.5M),
    2.5 → 9,017,560 (9.0M); 0.5 and 1.0 are registered.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        scale: float = 1.0,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.2,
        class_expand: int = 1280,
    ) -> None:
        super().__init__()
        cifar = check_stem(stem)
        self.quant = QuantStub(scale=input_scale)
        self.conv1 = stem_conv(make_divisible(16 * scale), cifar, "hardswish")
        stages = []
        for i, blocks in enumerate(_STAGES):
            stages.append(
                nn.Sequential(
                    *(
                        LCNetBlock(
                            make_divisible(c_in * scale),
                            make_divisible(c_out * scale),
                            k,
                            1 if (cifar and i == 1 and j == 0) else s,
                            se,
                        )
                        for j, (k, c_in, c_out, s, se) in enumerate(blocks)
                    )
                )
            )
        self.blocks2, self.blocks3, self.blocks4, self.blocks5, self.blocks6 = stages
        c = make_divisible(512 * scale)
        self.feature_channels = [make_divisible(ch * scale) for ch in (64, 128, 256, 512)]
        self.include_top = include_top
        if include_top:
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.last_conv = ConvModule2d(c, class_expand, 1, bias=False, act_layer="hardswish")
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(class_expand, num_classes)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(4)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.blocks2(self.conv1(self.quant(x)))
        if self.include_top:
            x = self.blocks6(self.blocks5(self.blocks4(self.blocks3(x))))
            x = self.last_conv(self.pool(x))
            return self.dequant(self.fc(self.dropout(torch.flatten(x, 1))))
        features = []
        for stage in (self.blocks3, self.blocks4, self.blocks5, self.blocks6):
            x = stage(x)
            features.append(x)
        return dequant_features(self.dequants, features)


@register_model
def pp_lcnet_x0_5(num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet 0.5×: 1,879,576 parameters; the paper / PaddleClas table lists 1.9M."""
    return PPLCNet(num_classes=num_classes, scale=0.5, **kwargs)


@register_model
def pp_lcnet_x1_0(num_classes: int = 1000, **kwargs) -> PPLCNet:
    """PP-LCNet 1.0×: 2,952,520 parameters; the paper / PaddleClas table lists 3.0M (ours is 1.6 % below; 2.9M when truncated)."""
    return PPLCNet(num_classes=num_classes, scale=1.0, **kwargs)
