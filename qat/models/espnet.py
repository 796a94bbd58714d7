"""Quantizable ESPNetv2 (Mehta et al., CVPR 2019) in the layout of the authors' classification code.

``QuantStub → level1 (3×3 s2 conv-BN-PReLU) → level2 (down-sampler) → level3 (down-sampler +
3 EESP) → level4 (down-sampler + 7 EESP) → level5 (down-sampler + 3 EESP) → head (3×3 depthwise
conv-BN-PReLU, 1×1 grouped conv-BN-PReLU to 1024) → pool → dropout → fc → DeQuantStub``.
Down-samplers of levels 2-4 add a long-range shortcut from the input image: the model
average-pools the quantized image (3×3, stride 2, one pool per resolution, each with its own
int8 grid) and hands each down-sampler the copy at its output size. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: level1 runs at stride 1 and the image pyramid starts one level lower (no
  parameters change), so the network down-samples 16× instead of 32× and a 32×32 input ends on
  a 2×2 map;
- ``include_top=False``: no head/fc; ``forward`` returns the outputs of levels 2-5 (strides 4, 8,
  16, 32; with the CIFAR stem 2, 4, 8, 16), one ``DeQuantStub`` each.

Parameter counts at 1000 classes: ``espnetv2_s0_5`` 1,239,722 and ``espnetv2_s1_0`` 1,666,942
vs the reference code's 1,241,332 and 1,670,072 (the README's 1.24M / 1.67M): -0.13 % / -0.19 %,
exactly the reference's never-called layers (the image shortcut of its last down-sampler and the
output PReLU of each stride-2 EESP). All other layers come in the reference's order.
Activations are per-channel PReLU, which runs in int8 as an exact per-channel lookup table
(``nn.PReLU``'s policy in ``qat.quant.int8_ops``); unlike ReLU it does not fuse into the conv before it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants, init_weights, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.espnet import EESP, EESPDownsampler
from qat.nn.conv import ConvModule2d
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = ["CHANNELS", "ESPNetV2", "espnetv2_s0_5", "espnetv2_s1_0"]

#: (level1, level2, level3, level4, level5, head) channels per scale ``s``, as the reference config.
CHANNELS: dict[str, tuple[int, ...]] = {
    "s0_5": (16, 32, 64, 128, 256, 1024),
    "s1_0": (32, 64, 128, 256, 512, 1024),
    "s1_25": (32, 80, 160, 320, 640, 1024),
    "s1_5": (32, 96, 192, 384, 768, 1024),
    "s2_0": (32, 128, 256, 512, 1024, 1280),
}
_REPEATS = (3, 7, 3)  # EESP units after the down-samplers of levels 3, 4, 5
_RECEPTIVE_LIMITS = (13, 11, 9, 7, 5)  # largest effective kernel per spatial level (reference)
_BRANCHES = 4


class ESPNetV2(nn.Module):
    """ESPNetv2 with ``channels = (level1, level2, level3, level4, level5, head)``.

    ``CHANNELS`` holds the reference's five scales (s = 0.5, 1.0, 1.25, 1.5, 2.0).
    """

    def __init__(
        self,
        channels: Sequence[int],
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        cifar = check_stem(stem)
        if len(channels) != 6:
            raise ValueError("channels needs 6 entries: level1..level5 and the head")
        c1, c2, c3, c4, c5, c_head = channels
        lim, k = _RECEPTIVE_LIMITS, _BRANCHES
        self.quant = QuantStub(scale=input_scale)
        self.level1 = stem_conv(c1, cifar, nn.PReLU(c1), bias=False)
        self.level2_0 = EESPDownsampler(c1, c2, k, lim[0])
        self.level3_0 = EESPDownsampler(c2, c3, k, lim[1])
        self.level3 = nn.Sequential(*(EESP(c3, c3, 1, k, lim[2]) for _ in range(_REPEATS[0])))
        self.level4_0 = EESPDownsampler(c3, c4, k, lim[2])
        self.level4 = nn.Sequential(*(EESP(c4, c4, 1, k, lim[3]) for _ in range(_REPEATS[1])))
        self.level5_0 = EESPDownsampler(c4, c5, k, lim[3], reinforce=False)
        self.level5 = nn.Sequential(*(EESP(c5, c5, 1, k, lim[4]) for _ in range(_REPEATS[2])))
        # The image pyramid for the shortcuts of levels 2-4; with the ImageNet stem level 2 sits
        # at stride 4, so its copy needs two pools (the first one's output feeds only the second).
        self.image_pools = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(3 if cifar else 4))
        self.include_top = include_top
        if include_top:
            self.head = nn.Sequential(
                ConvModule2d(c5, c5, 3, padding=1, groups=c5, bias=False, norm_layer="bn", act_layer=nn.PReLU(c5)),
                ConvModule2d(c5, c_head, 1, groups=k, bias=False, norm_layer="bn", act_layer=nn.PReLU(c_head)),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(c_head, num_classes)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(4)
        self.feature_channels = [c2, c3, c4, c5]
        init_weights(self, linear=None)
        if include_top:  # the reference initialises its classifier with N(0, 0.001)
            nn.init.normal_(self.fc.weight, 0, 0.001)
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.quant(x)
        images, image = [], x
        for pool in self.image_pools:
            image = pool(image)
            images.append(image)
        image2, image3, image4 = images[-3:]
        f2 = self.level2_0(self.level1(x), image2)
        f3 = self.level3(self.level3_0(f2, image3))
        f4 = self.level4(self.level4_0(f3, image4))
        f5 = self.level5(self.level5_0(f4))
        if self.include_top:
            y = self.dropout(torch.flatten(self.pool(self.head(f5)), 1))
            return self.dequant(self.fc(y))
        return dequant_features(self.dequants, (f2, f3, f4, f5))


@register_model
def espnetv2_s0_5(num_classes: int = 1000, **kwargs) -> ESPNetV2:
    """ESPNetv2 at s = 0.5: 1,239,722 parameters vs the reference's 1,241,332 (1.24M; its 1,610 extra
    parameters are never called)."""
    return ESPNetV2(CHANNELS["s0_5"], num_classes=num_classes, **kwargs)


@register_model
def espnetv2_s1_0(num_classes: int = 1000, **kwargs) -> ESPNetV2:
    """ESPNetv2 at s = 1.0: 1,666,942 parameters vs the reference's 1,670,072 (1.67M; its 3,130 extra
    parameters are never called)."""
    return ESPNetV2(CHANNELS["s1_0"], num_classes=num_classes, **kwargs)
