"""Quantizable ShuffleNetV2 (Ma et al., 2018) in torchvision's layout.

``QuantStub → conv1 (3×3 s2) → maxpool (s2) → stage2/3/4 (ShuffleV2Block) → conv5 (1×1) → pool →
fc → DeQuantStub``. Parameter counts at 1000 classes equal torchvision's
(``shufflenet_v2_x0_5`` 1,366,792; ``shufflenet_v2_x1_0`` 2,278,604) and the layers come in the
same order. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: conv1 gets stride 1 and the max-pool is dropped (no parameters change), so the
  network down-samples 8× instead of 32× and a 32×32 input ends on a 4×4 map;
- ``include_top=False``: no conv5/pool/fc; ``forward`` returns the outputs of the stem and of
  stage2/3/4 (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.shufflenet import ShuffleV2Block
from qat.nn.conv import ConvModule2d
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = ["STAGE_CHANNELS", "ShuffleNetV2", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0"]

_REPEATS = (4, 8, 4)
# (stem, stage2, stage3, stage4, conv5) per width, as torchvision's shufflenet_v2_x{0_5,1_0,1_5,2_0}.
STAGE_CHANNELS: dict[str, tuple[int, ...]] = {
    "x0_5": (24, 48, 96, 192, 1024),
    "x1_0": (24, 116, 232, 464, 1024),
    "x1_5": (24, 176, 352, 704, 1024),
    "x2_0": (24, 244, 488, 976, 2048),
}


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with ``stage_channels = (stem, stage2, stage3, stage4, conv5)``.

    ``STAGE_CHANNELS`` holds torchvision's four widths; with ``"x1_5"`` (3,503,624 parameters) and
    ``"x2_0"`` (7,393,996) the counts equal torchvision's too.
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cifar = check_stem(stem)
        if len(stage_channels) != 5:
            raise ValueError("stage_channels needs 5 entries: stem, stage2, stage3, stage4, conv5")
        self.quant = QuantStub(scale=input_scale)
        c = stage_channels[0]
        self.conv1 = stem_conv(c, cifar, "relu")
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        stages = []
        for repeats, out in zip(_REPEATS, stage_channels[1:4]):
            stages.append(
                nn.Sequential(ShuffleV2Block(c, out, 2), *(ShuffleV2Block(out, out, 1) for _ in range(repeats - 1)))
            )
            c = out
        self.stage2, self.stage3, self.stage4 = stages
        self.include_top = include_top
        if include_top:
            self.conv5 = ConvModule2d(c, stage_channels[4], 1, norm_layer="bn", act_layer="relu")
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(stage_channels[4], num_classes)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(4)
        self.feature_channels = list(stage_channels[:4])

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.maxpool(self.conv1(self.quant(x)))
        if self.include_top:
            x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
            return self.dequant(self.fc(self.dropout(torch.flatten(self.pool(x), 1))))
        features = [x]
        for stage in (self.stage2, self.stage3, self.stage4):
            features.append(stage(features[-1]))
        return dequant_features(self.dequants, features)


def _build(channels: Sequence[int], num_classes: int, **kwargs) -> ShuffleNetV2:
    return ShuffleNetV2(channels, num_classes=num_classes, **kwargs)


@register_model
def shufflenet_v2_x0_5(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 0.5×: 1,366,792 parameters, equal to ``torchvision.models.shufflenet_v2_x0_5``."""
    return _build(STAGE_CHANNELS["x0_5"], num_classes, **kwargs)


@register_model
def shufflenet_v2_x1_0(num_classes: int = 1000, **kwargs) -> ShuffleNetV2:
    """ShuffleNetV2 1.0×: 2,278,604 parameters, equal to ``torchvision.models.shufflenet_v2_x1_0``."""
    return _build(STAGE_CHANNELS["x1_0"], num_classes, **kwargs)
