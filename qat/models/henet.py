"""HENet (Horizon Robotics' Hybrid Efficient Network for the Journey 6 BPU, HAT ``backbones/henet.py``).

Four stages of depthwise-conv blocks (``qat.nn.DWCB`` / ``GroupDWCB`` / ``AltDWCB``, optional
``HENetAttentionBlock`` at a stage's tail) joined by ``S2DDown`` 2x2 stride-2 convs, after a stem
of two 3x3 stride-2 conv+BN+ReLU. The classifier head is BN -> global average pool -> 1x1
conv+BN+GELU to ``feature_mix_channel`` -> Linear. Every layer is a ``qat.nn`` layer, so the model
fuses, fake-quantizes and converts to int8 with no model-specific code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from qat.models.base import check_stem, dequant_features, feature_dequants, stem_conv
from qat.models.registry import register_model
from qat.nn import BasicHENetStageBlock, ConvModule2d, DeQuantStub, QuantStub, S2DDown

__all__ = ["HENet", "henet_tinye", "henet_tinym"]

T = TypeVar("T")


def _per_stage(value: T | Sequence[T], num_stages: int, name: str) -> list[T]:
    """A per-stage list from one value or a sequence of ``num_stages`` values (strings count as one value)."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_stages:
            raise ValueError(f"{name} needs {num_stages} values (one per stage), got {len(value)}")
        return list(value)
    return [value] * num_stages


class HENet(nn.Module):
    """HENet classifier / backbone.

    Args mirror HAT's ``HENet`` (per-stage ones take one value or one per stage):
    ``block_nums``, ``embed_dims``, ``block_cls`` (``"DWCB"``, ``"GroupDWCB"``, ``"AltDWCB"``),
    ``attention_block_num`` (attention blocks at each stage's tail), ``mlp_ratios``,
    ``mlp_ratio_attn``, ``act_layer``, ``use_layer_scale``, ``layer_scale_init_value`` (attention
    blocks only; conv blocks start at 1), ``extra_act``, ``feature_mix_channel`` (0: none),
    ``num_classes`` (0: return the pooled features), ``include_top``, ``stage_out_norm`` (a BN on
    each returned feature map when ``include_top=False``).

    ``stem``: ``"imagenet"`` (two stride-2 convs, overall stride 32) or ``"cifar"``: the same two
    3x3 conv+BN+ReLU with stride 1 instead of 2, nothing else changed (same parameters), so the
    overall stride is 8 and a 32x32 input reaches the stages at 32/16/8/4 pixels.

    ``include_top=False`` returns the four stage outputs (strides 4/8/16/32 with the imagenet
    stem), each through its own ``DeQuantStub``; ``feature_channels`` lists their widths. HAT also prepends an upsampled copy of stage 1
    (a stride-2 map for its FPN necks); that is left to the neck here.

    ``input_scale``: fixed input grid of the ``QuantStub`` (1/128 for inputs normalised to
    [-1, 1)); ``None`` observes the input range instead.
    """

    def __init__(
        self,
        block_nums: Sequence[int],
        embed_dims: Sequence[int],
        block_cls: str | Sequence[str],
        attention_block_num: int | Sequence[int] = 0,
        mlp_ratios: float | Sequence[float] = 2.0,
        mlp_ratio_attn: float = 2.0,
        act_layer: Any = nn.GELU,
        use_layer_scale: bool | Sequence[bool] = True,
        layer_scale_init_value: float = 1e-5,
        extra_act: bool | Sequence[bool] = False,
        num_classes: int = 1000,
        include_top: bool = True,
        feature_mix_channel: int = 1024,
        stem: str = "imagenet",
        in_channels: int = 3,
        stage_out_norm: bool = False,
        input_scale: float | None = 1 / 128,
    ) -> None:
        super().__init__()
        n = len(block_nums)
        if len(embed_dims) != n:
            raise ValueError(f"embed_dims needs {n} values (one per stage), got {len(embed_dims)}")
        cifar = check_stem(stem)
        blocks = _per_stage(block_cls, n, "block_cls")
        attn_nums = _per_stage(attention_block_num, n, "attention_block_num")
        ratios = _per_stage(mlp_ratios, n, "mlp_ratios")
        acts = _per_stage(act_layer, n, "act_layer")
        scales = _per_stage(use_layer_scale, n, "use_layer_scale")
        extras = _per_stage(extra_act, n, "extra_act")
        self.include_top = include_top

        self.quant = QuantStub(scale=input_scale)
        self.patch_embed = nn.Sequential(
            stem_conv(embed_dims[0] // 2, cifar, "relu", in_channels=in_channels),
            stem_conv(embed_dims[0], cifar, "relu", in_channels=embed_dims[0] // 2),
        )
        self.stages = nn.ModuleList(
            BasicHENetStageBlock(
                embed_dims[i],
                block_nums[i],
                attention_block_num=attn_nums[i],
                mlp_ratio=ratios[i],
                mlp_ratio_attn=mlp_ratio_attn,
                act_layer=acts[i],
                use_layer_scale=scales[i],
                layer_scale_init_value=layer_scale_init_value,
                extra_act=extras[i],
                block_cls=blocks[i],
            )
            for i in range(n)
        )
        self.downsample_block = nn.ModuleList(S2DDown(embed_dims[i], embed_dims[i + 1]) for i in range(n - 1))
        self.feature_channels = list(embed_dims)

        if include_top:
            self.norm = nn.BatchNorm2d(embed_dims[-1])
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            last = embed_dims[-1]
            if feature_mix_channel:
                act = acts[-1].removeprefix("nn.") if isinstance(acts[-1], str) else acts[-1]
                self.feature_mix_layer = ConvModule2d(
                    last, feature_mix_channel, 1, bias=False, norm_layer="bn", act_layer=act
                )
                last = feature_mix_channel
            else:
                self.feature_mix_layer = nn.Identity()
            self.head = nn.Linear(last, num_classes) if num_classes > 0 else nn.Identity()
            self.dequant = DeQuantStub()
        else:
            self.stage_norm = nn.ModuleList(nn.BatchNorm2d(d) if stage_out_norm else nn.Identity() for d in embed_dims)
            self.dequants = feature_dequants(len(embed_dims))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.patch_embed(self.quant(x))
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if not self.include_top:
                features.append(self.stage_norm[i](x))
            if i < len(self.downsample_block):
                x = self.downsample_block[i](x)
        if not self.include_top:
            return dequant_features(self.dequants, features)
        x = self.feature_mix_layer(self.avgpool(self.norm(x)))
        return self.dequant(self.head(torch.flatten(x, 1)))


_TINYM: dict[str, Any] = {
    "block_nums": (4, 3, 8, 6),
    "embed_dims": (64, 128, 192, 384),
    "block_cls": ("GroupDWCB", "GroupDWCB", "AltDWCB", "DWCB"),
    "attention_block_num": (0, 0, 0, 0),
    "mlp_ratios": (2, 2, 2, 3),
    "mlp_ratio_attn": 2.0,
    "feature_mix_channel": 1024,
}
_TINYE: dict[str, Any] = {
    **_TINYM,
    "block_nums": (3, 3, 8, 6),
    "embed_dims": (48, 96, 192, 384),
    "block_cls": ("DWCB", "GroupDWCB", "AltDWCB", "DWCB"),
}


@register_model
def henet_tinym(num_classes: int = 1000, **kwargs: Any) -> HENet:
    """HENet-TinyM (Journey 6M): depths 4/3/8/6, widths 64/128/192/384, GroupDWCB/GroupDWCB/AltDWCB/DWCB.

    No attention blocks (``attention_block_num=(0, 0, 0, 0)``, as in HAT's TinyM config).
    8,632,328 parameters at 1000 classes (7,211,296 as a backbone, ``include_top=False``).
    Any :class:`HENet` argument can be overridden, e.g. ``stem="cifar"``, ``include_top=False``,
    ``input_scale=None``.
    """
    return HENet(**{**_TINYM, "num_classes": num_classes, **kwargs})


@register_model
def henet_tinye(num_classes: int = 1000, **kwargs: Any) -> HENet:
    """HENet-TinyE (Journey 6E): depths 3/3/8/6, widths 48/96/192/384, DWCB/GroupDWCB/AltDWCB/DWCB.

    No attention blocks (as in HAT's TinyE config). 8,479,504 parameters at 1000 classes
    (7,058,472 as a backbone, ``include_top=False``).
    Published (Horizon, OpenExplorer model card, ImageNet 224, J6M): top-1 float 77.62,
    calibration 76.93, deployed int8 77.19; no parameter count is published.
    Any :class:`HENet` argument can be overridden, e.g. ``stem="cifar"``, ``include_top=False``.
    """
    return HENet(**{**_TINYE, "num_classes": num_classes, **kwargs})
