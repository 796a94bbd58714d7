"""Quantizable ShuffleNetV1 (Zhang et al., 2018) in the layout of the official megvii code.

``QuantStub → conv1 (3×3 s2) → maxpool (s2) → stage2/3/4 (ShuffleV1Block ×4/8/4) → pool → fc
(no bias) → DeQuantStub``. Channels are the official ``ShuffleNet-Series/ShuffleNetV1`` tables
(``STAGE_CHANNELS``; the stem is 12 wide at 0.5× g=3, 16 at 0.5× g=8). Parameter counts at 1000
classes equal that code's, parameter shape for parameter shape (``shufflenet_v1_g3_x0_5``
717,324; ``shufflenet_v1_g3_x1_0`` 1,864,728; ``shufflenet_v1_g8_x1_0`` 2,433,768), which its
README rounds to 0.7M, 1.9M and 2.4M. The unit follows the paper's figure 2: the channel shuffle
(``qat.nn.blocks.shufflenet.channel_shuffle``) comes right after the first 1×1 conv, where the
official code shuffles after the depthwise conv with the inverse interleave -- so its checkpoints
do not load as they are. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: conv1 gets stride 1 and the max-pool is dropped (no parameters change), so the
  network down-samples 8× instead of 32× and a 32×32 input ends on a 4×4 map;
- ``include_top=False``: no pool/fc; ``forward`` returns the outputs of the stem and of
  stage2/3/4 (strides 4, 8, 16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from qat.models.base import StagedClassifier, check_stem, init_weights, pooled_top, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.shufflenet_v1 import ShuffleV1Block

__all__ = [
    "STAGE_CHANNELS",
    "ShuffleNetV1",
    "shufflenet_v1_g3_x0_5",
    "shufflenet_v1_g3_x1_0",
    "shufflenet_v1_g8_x1_0",
]

_REPEATS = (4, 8, 4)
# (stem, stage2, stage3, stage4) per (groups, width), as the official network.py.
STAGE_CHANNELS: dict[tuple[int, str], tuple[int, int, int, int]] = {
    (3, "x0_5"): (12, 120, 240, 480),
    (3, "x1_0"): (24, 240, 480, 960),
    (3, "x1_5"): (24, 360, 720, 1440),
    (3, "x2_0"): (48, 480, 960, 1920),
    (8, "x0_5"): (16, 192, 384, 768),
    (8, "x1_0"): (24, 384, 768, 1536),
    (8, "x1_5"): (24, 576, 1152, 2304),
    (8, "x2_0"): (48, 768, 1536, 3072),
}


class ShuffleNetV1(StagedClassifier):
    """ShuffleNetV1 with ``stage_channels = (stem, stage2, stage3, stage4)`` and ``groups``.

    The stem (conv1 + max-pool) is the first of the four stages, so ``include_top=False`` returns
    its output too. The first unit of stage 2 has a dense first 1×1 conv (the paper: its input is
    too narrow to group). Every other ``STAGE_CHANNELS`` entry builds too, e.g. g=3 2.0× at
    5,449,776 parameters (official README: 5.4M).
    """

    def __init__(
        self,
        stage_channels: Sequence[int],
        groups: int = 3,
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.0,
    ) -> None:
        cifar = check_stem(stem)
        if len(stage_channels) != 4:
            raise ValueError("stage_channels needs 4 entries: stem, stage2, stage3, stage4")
        c = stage_channels[0]
        stages = [
            nn.Sequential(
                stem_conv(c, cifar, "relu"),
                nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1),
            )
        ]
        for i, (repeats, out) in enumerate(zip(_REPEATS, stage_channels[1:])):
            blocks = [ShuffleV1Block(c, out, 2, groups, first_grouped=i > 0)]
            blocks += [ShuffleV1Block(out, out, 1, groups) for _ in range(repeats - 1)]
            stages.append(nn.Sequential(*blocks))
            c = out
        head, classifier = pooled_top(include_top, c, num_classes, dropout, bias=False)
        super().__init__(nn.Identity(), stages, stage_channels, head, classifier, input_scale)
        init_weights(self, linear=None)
        if include_top:
            nn.init.normal_(self.classifier[1].weight, 0, 0.01)


@register_model
def shufflenet_v1_g3_x0_5(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 0.5× g=3: 717,324 parameters (official code: the same; README 0.7M, 38 MFLOPs)."""
    return ShuffleNetV1(STAGE_CHANNELS[(3, "x0_5")], 3, num_classes=num_classes, **kwargs)


@register_model
def shufflenet_v1_g3_x1_0(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1.0× g=3: 1,864,728 parameters (official code: the same; README 1.9M, 138 MFLOPs)."""
    return ShuffleNetV1(STAGE_CHANNELS[(3, "x1_0")], 3, num_classes=num_classes, **kwargs)


@register_model
def shufflenet_v1_g8_x1_0(num_classes: int = 1000, **kwargs) -> ShuffleNetV1:
    """ShuffleNetV1 1.0× g=8: 2,433,768 parameters (official code: the same; README 2.4M, 138 MFLOPs)."""
    return ShuffleNetV1(STAGE_CHANNELS[(8, "x1_0")], 8, num_classes=num_classes, **kwargs)
