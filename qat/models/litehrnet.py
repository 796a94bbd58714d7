"""Quantizable Lite-HRNet (Yu et al., 2021) backbone with a small classification head.

``QuantStub → stem (1/4) → 3 stages of Lite-HR modules (2, 3, 4 parallel branches at 1/4 ... 1/32)
→ iterative head (top-down refinement, as mmpose's ``with_head=True``) → head → DeQuantStub``.
The blocks are in ``qat.nn.blocks.litehrnet`` (fixed-kernel cross-resolution pooling, ``qat.nn``
arithmetic, see there). The classification head is ours (the paper is about pose estimation):
global-average-pool every branch, concatenate, dropout, linear. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: both stride-2 convs of the stem get stride 1 (no parameters change), so the
  branches run at 1/1 ... 1/8 and a 32×32 input's lowest branch is 4×4;
- ``include_top=False``: no classification head; ``forward`` returns the four branch outputs
  (highest resolution first; channels 40, 40, 80, 160 after the iterative head), one
  ``DeQuantStub`` each.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants
from qat.models.registry import register_model
from qat.nn.blocks.litehrnet import IterativeHead, LiteHRModule, LiteHRStem
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Cat
from qat.nn.stubs import DeQuantStub, QuantStub

__all__ = ["LiteHRNet", "litehrnet_18", "litehrnet_30"]

_CHANNELS = ((40, 80), (40, 80, 160), (40, 80, 160, 320))


def _transition(pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
    """Between stages: adapt existing branches' widths (dw 3×3 + 1×1) and grow new, lower branches
    from the lowest existing one (stride-2 dw 3×3 + 1×1 per halving); ``Identity`` where nothing changes."""
    layers = nn.ModuleList()
    for i, c in enumerate(cur):
        if i < len(pre):
            if c == pre[i]:
                layers.append(nn.Identity())
            else:
                layers.append(
                    nn.Sequential(
                        ConvModule2d(pre[i], pre[i], 3, 1, 1, groups=pre[i], norm_layer="bn"),
                        ConvModule2d(pre[i], c, 1, norm_layer="bn", act_layer="relu"),
                    )
                )
            continue
        steps = []
        c_in = pre[-1]
        for j in range(i + 1 - len(pre)):
            c_out = c if j == i - len(pre) else c_in
            steps.append(
                nn.Sequential(
                    ConvModule2d(c_in, c_in, 3, 2, 1, groups=c_in, norm_layer="bn"),
                    ConvModule2d(c_in, c_out, 1, norm_layer="bn", act_layer="relu"),
                )
            )
        layers.append(nn.Sequential(*steps))
    return layers


class LiteHRNet(nn.Module):
    """Lite-HRNet with ``num_modules`` Lite-HR modules per stage (18: (2, 4, 2); 30: (3, 8, 3))."""

    def __init__(
        self,
        num_modules: Sequence[int] = (2, 4, 2),
        num_classes: int = 1000,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        with_head: bool = True,
        num_blocks: int = 2,
        reduce_ratio: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        stride = 1 if check_stem(stem) else 2
        self.quant = QuantStub(scale=input_scale)
        self.stem = LiteHRStem(3, 32, 32, 1.0, conv_stride=stride, branch_stride=stride)
        pre: Sequence[int] = (32,)
        self.transitions = nn.ModuleList()
        self.stages = nn.ModuleList()
        for n, channels in zip(num_modules, _CHANNELS):
            self.transitions.append(_transition(pre, channels))
            self.stages.append(nn.Sequential(*(LiteHRModule(channels, num_blocks, reduce_ratio) for _ in range(n))))
            pre = channels
        self.head = IterativeHead(pre) if with_head else None
        out_channels = [pre[0], *pre[:-1]] if with_head else list(pre)
        self.feature_channels = out_channels
        self.include_top = include_top
        if include_top:
            self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(1) for _ in out_channels)
            self.cat = Cat(dim=1)
            self.dropout = nn.Dropout(dropout)
            self.fc = nn.Linear(sum(out_channels), num_classes)
            self.dequant = DeQuantStub()
        else:
            self.dequants = feature_dequants(len(out_channels))

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Quantized input → the refined multi-resolution features (still int8 after ``convert``)."""
        y = [self.stem(self.quant(x))]
        for transition, stage in zip(self.transitions, self.stages):
            branches = [t(y[min(i, len(y) - 1)]) for i, t in enumerate(transition)]
            y = stage(branches)
        return y if self.head is None else self.head(y)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        y = self.forward_features(x)
        if not self.include_top:
            return dequant_features(self.dequants, y)
        pooled = self.cat([pool(f) for pool, f in zip(self.pools, y)])
        return self.dequant(self.fc(self.dropout(torch.flatten(pooled, 1))))


@register_model
def litehrnet_18(num_classes: int = 1000, **kwargs) -> LiteHRNet:
    """Lite-HRNet-18: backbone (stem, stages, iterative head) 1,130,072 parameters vs the paper's 1.1M
    (+2.7 %; the paper's figure is for the pose network and rounds). With the head: 1,451,072."""
    return LiteHRNet((2, 4, 2), num_classes=num_classes, **kwargs)


@register_model
def litehrnet_30(num_classes: int = 1000, **kwargs) -> LiteHRNet:
    """Lite-HRNet-30: backbone (stem, stages, iterative head) 1,763,020 parameters vs the paper's 1.8M
    (-2.1 %; the paper's figure is for the pose network and rounds). With the head: 2,084,020."""
    return LiteHRNet((3, 8, 3), num_classes=num_classes, **kwargs)
