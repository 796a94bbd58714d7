"""Pretrained float weights from torchvision, timm or a state dict, mapped onto the zoo by declared key maps.

Each zoo model with a torchvision or timm counterpart declares a :class:`KeyMap` per reference:
an ordered table renaming the reference's blocks to ours (both sides spelled out from the
architecture's block counts) and ordered regex rules renaming the layers inside them. Keys are
translated by name, never by position, so a file of another architecture fails with the keys
that did not translate. A state dict that already uses our key names (``model.state_dict()``,
a ``float/last.ckpt``'s weights) loads as it is.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from qat.pipeline.errors import CheckpointError

__all__ = [
    "KEY_MAPS",
    "KeyMap",
    "PretrainedWeightsError",
    "load_pretrained",
    "pretrained_sources",
    "read_state_dict",
    "translate",
]

log = logging.getLogger(__name__)

BN_STATS = ("num_batches_tracked",)
_PARAM = r"\.(?P<param>[^.]+)"


class PretrainedWeightsError(CheckpointError):
    """Pretrained weights that cannot be read, fetched or mapped onto the model."""


Rule = tuple[str, str]


@dataclass(frozen=True)
class KeyMap:
    """How one reference implementation's state dict maps onto one zoo model.

    ``blocks``: (reference prefix, our prefix) pairs, applied first (longest prefix wins);
    ``rules``: (regex, template) pairs applied in order to the renamed key, the first full
    match wins (``re.Match.expand`` syntax); ``skip``: regexes of reference keys that are
    deliberately dropped (training-only heads); ``classifier``: our final linear layer, the one
    re-initialised when the class count differs; ``differences``: what the reference computes
    differently from ours with the same weights (empty: identical outputs).
    """

    source: str
    arch: str
    weights: str
    classifier: str
    blocks: tuple[tuple[str, str], ...] = ()
    rules: tuple[Rule, ...] = ()
    skip: tuple[str, ...] = ()
    differences: str = ""
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(default=(), init=False, repr=False, compare=False)
    _skipped: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple((re.compile(p), t) for p, t in self.rules))
        object.__setattr__(self, "_skipped", tuple(re.compile(p) for p in self.skip))

    def skips(self, key: str) -> bool:
        """Whether the reference's ``key`` is deliberately not loaded."""
        return any(p.fullmatch(key) for p in self._skipped)

    def translate(self, key: str) -> str | None:
        """Our key for the reference's ``key``, or ``None`` when no rule covers it."""
        for ref_prefix, our_prefix in sorted(self.blocks, key=lambda b: -len(b[0])):
            if key.startswith(ref_prefix + "."):
                key = our_prefix + key[len(ref_prefix) :]
                break
        for pattern, template in self._compiled:
            match = pattern.fullmatch(key)
            if match:
                return match.expand(template)
        return None


def _m(src: str, dst: str) -> Rule:
    """Rule renaming a module path (regex ``src``) to ``dst``, keeping the parameter name."""
    return src + _PARAM, dst + r".\g<param>"


def _convbn(src: str, dst: str, conv: str = "0", bn: str = "1") -> list[Rule]:
    """A reference conv + BN pair (``src.<conv>``, ``src.<bn>``) onto our ``ConvModule2d`` ``dst``."""
    return [_m(rf"{src}\.{conv}", dst + ".conv"), _m(rf"{src}\.{bn}", dst + ".norm")]


def _seq(fmt: str, depths: Sequence[int], start: int = 0) -> list[str]:
    """Block prefixes ``fmt.format(stage, block)`` for ``depths`` blocks per stage."""
    return [fmt.format(start + s, b) for s, d in enumerate(depths) for b in range(d)]


def _ours(stem: int, depths: Sequence[int], head: Sequence[str] = ()) -> list[str]:
    """Our block prefixes: ``stem.1..stem`` then ``stages.<s>.<b>`` then ``head`` entries."""
    return [f"stem.{i}" for i in range(1, stem + 1)] + _seq("stages.{}.{}", depths) + list(head)


def _pairs(ref: Sequence[str], ours: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """Reference block prefixes paired with ours; the two declared lists must have equal lengths."""
    if len(ref) != len(ours):
        raise ValueError(f"key map declares {len(ref)} reference blocks for {len(ours)} of ours")
    return tuple(zip(ref, ours))


_ANY_BLOCK = r"(?P<b>(?:stem|stages\.\d+)\.\d+)"
_IR_BLOCK = r"(?P<b>stages\.\d+\.\d+)"
_DS_BLOCK = r"(?P<b>stem\.[1-9]\d*)"
_SE_TIMM = [_m(_ANY_BLOCK + r"\.se\.conv_reduce", r"\g<b>.se.reduce.conv"),
            _m(_ANY_BLOCK + r"\.se\.conv_expand", r"\g<b>.se.expand.conv")]  # fmt: skip
_SE_TV = [_m(r"(?P<b>.+)\.block\.\d+\.fc1", r"\g<b>.se.reduce.conv"),
          _m(r"(?P<b>.+)\.block\.\d+\.fc2", r"\g<b>.se.expand.conv")]  # fmt: skip


def _timm_stem_head(head: str | None = "head.0") -> list[Rule]:
    """timm EfficientNet-family stem (``conv_stem``/``bn1``), head (``conv_head``/``bn2``) and classifier."""
    rules = [_m("conv_stem", "stem.0.conv"), _m("bn1", "stem.0.norm"), _m("classifier", "classifier.1")]
    if head:
        rules += [_m("conv_head", head + ".conv"), _m("bn2", head + ".norm")]
    return rules


def _timm_inverted_residual() -> list[Rule]:
    """timm depthwise-separable blocks (in our ``stem.k``) and inverted residuals (in ``stages``)."""
    return [
        _m(_DS_BLOCK + r"\.conv_dw", r"\g<b>.dw.conv"),
        _m(_DS_BLOCK + r"\.bn1", r"\g<b>.dw.norm"),
        _m(_DS_BLOCK + r"\.conv_pw", r"\g<b>.project.conv"),
        _m(_DS_BLOCK + r"\.bn2", r"\g<b>.project.norm"),
        _m(_IR_BLOCK + r"\.conv_pw", r"\g<b>.expand.conv"),
        _m(_IR_BLOCK + r"\.bn1", r"\g<b>.expand.norm"),
        _m(_IR_BLOCK + r"\.conv_dw", r"\g<b>.dw.conv"),
        _m(_IR_BLOCK + r"\.bn2", r"\g<b>.dw.norm"),
        _m(_IR_BLOCK + r"\.conv_pwl", r"\g<b>.project.conv"),
        _m(_IR_BLOCK + r"\.bn3", r"\g<b>.project.norm"),
        *_SE_TIMM,
    ]


def _tv_mbconv(ds_blocks: str) -> list[Rule]:
    """torchvision ``InvertedResidual``/``MBConv`` (``block.<i>`` sub-layers); ``ds_blocks``: the blocks without expansion."""
    ds, ir = rf"(?P<b>{ds_blocks})", rf"(?P<b>(?!(?:{ds_blocks})\.)(?:stem|stages\.\d+)\.\d+)"
    return [
        *_convbn(ds + r"\.block\.0", r"\g<b>.dw"),
        *_convbn(ds + r"\.block\.[12]", r"\g<b>.project"),
        *_convbn(ir + r"\.block\.0", r"\g<b>.expand"),
        *_convbn(ir + r"\.block\.1", r"\g<b>.dw"),
        *_convbn(ir + r"\.block\.[23]", r"\g<b>.project"),
        *_SE_TV,
    ]


def _tv_mobilenet_v2() -> KeyMap:
    ours = _ours(1, (2, 3, 7, 4))
    ds, ir = r"(?P<b>stem\.1)", _IR_BLOCK
    return KeyMap(
        "torchvision", "mobilenet_v2", "IMAGENET1K_V2", "classifier.1",
        blocks=_pairs([f"features.{i}" for i in range(1, 18)], ours) + (("features.0", "stem.0"), ("features.18", "head.0")),
        rules=(
            *_convbn(r"(?P<b>stem\.0|head\.0)", r"\g<b>"),
            *_convbn(ds + r"\.conv\.0", r"\g<b>.dw"),
            _m(ds + r"\.conv\.1", r"\g<b>.project.conv"),
            _m(ds + r"\.conv\.2", r"\g<b>.project.norm"),
            *_convbn(ir + r"\.conv\.0", r"\g<b>.expand"),
            *_convbn(ir + r"\.conv\.1", r"\g<b>.dw"),
            _m(ir + r"\.conv\.2", r"\g<b>.project.conv"),
            _m(ir + r"\.conv\.3", r"\g<b>.project.norm"),
            _m(r"classifier\.1", "classifier.1"),
        ),
    )  # fmt: skip


def _tv_mobilenet_v3(arch: str, stem: int, depths: tuple[int, ...], ds_blocks: str) -> KeyMap:
    ours = _ours(stem, depths)
    n = len(ours)
    return KeyMap(
        "torchvision", arch, "IMAGENET1K_V1", "classifier.3",
        blocks=_pairs([f"features.{i}" for i in range(1, n + 1)], ours)
        + (("features.0", "stem.0"), (f"features.{n + 1}", "head.0")),
        rules=(
            *_convbn(r"(?P<b>stem\.0|head\.0)", r"\g<b>"),
            *_tv_mbconv(ds_blocks),
            _m(r"classifier\.(?P<i>[03])", r"classifier.\g<i>"),
        ),
    )  # fmt: skip


# torchvision EfficientNet B0-B7: blocks per torchvision stage (features.1..7) and per our stage.
_TV_EFFICIENTNET = {
    0: ((1, 2, 2, 3, 3, 4, 1), 1, (2, 2, 6, 5)),
    1: ((2, 3, 3, 4, 4, 5, 2), 2, (3, 3, 8, 7)),
    2: ((2, 3, 3, 4, 4, 5, 2), 2, (3, 3, 8, 7)),
    3: ((2, 3, 3, 5, 5, 6, 2), 2, (3, 3, 10, 8)),
    4: ((2, 4, 4, 6, 6, 8, 2), 2, (4, 4, 12, 10)),
    5: ((3, 5, 5, 7, 7, 9, 3), 3, (5, 5, 14, 12)),
    6: ((3, 6, 6, 8, 8, 11, 3), 3, (6, 6, 16, 14)),
    7: ((4, 7, 7, 10, 10, 13, 4), 4, (7, 7, 20, 17)),
}


def _tv_efficientnet(variant: int) -> KeyMap:
    ref_depths, stem, depths = _TV_EFFICIENTNET[variant]
    return KeyMap(
        "torchvision", f"efficientnet_b{variant}", "IMAGENET1K_V1", "classifier.1",
        blocks=_pairs(_seq("features.{}.{}", ref_depths, start=1), _ours(stem, depths))
        + (("features.0.0", "stem.0.conv"), ("features.0.1", "stem.0.norm"),
           ("features.8.0", "head.0.conv"), ("features.8.1", "head.0.norm")),
        rules=(
            _m(r"(?P<b>(?:stem|head)\.0\.(?:conv|norm))", r"\g<b>"),
            *_tv_mbconv(r"stem\.[1-9]\d*"),
            _m(r"classifier\.1", "classifier.1"),
        ),
    )  # fmt: skip


def _resnet_rules(classifier: str, deep_stem: bool = False) -> list[Rule]:
    """torchvision/timm ResNet blocks (``layer<i>.<j>``, renamed to ``stages.<i-1>.<j>``).

    ``deep_stem``: timm's ResNet-D (three 3×3 stem convs, average-pool shortcut ``downsample.1/.2``).
    """
    blk = r"(?P<b>stages\.\d+\.\d+)"
    if deep_stem:
        stem = [*_convbn("conv1", "stem.0", "0", "1"), *_convbn("conv1", "stem.1", "3", "4"),
                _m(r"conv1\.6", "stem.2.conv"), _m("bn1", "stem.2.norm"),
                *_convbn(blk + r"\.downsample", r"\g<b>.downsample.1", "1", "2")]  # fmt: skip
    else:
        stem = [
            _m("conv1", "stem.0.conv"),
            _m("bn1", "stem.0.norm"),
            *_convbn(blk + r"\.downsample", r"\g<b>.downsample"),
        ]
    return [
        *stem,
        _m(blk + r"\.conv(?P<i>\d)", r"\g<b>.conv\g<i>.conv"),
        _m(blk + r"\.bn(?P<i>\d)", r"\g<b>.conv\g<i>.norm"),
        _m("fc", classifier),
    ]


def _resnet(
    source: str, arch: str, weights: str, depths: tuple[int, ...], classifier: str, deep_stem: bool = False
) -> KeyMap:
    ref = _seq("layer{}.{}", depths, start=1)
    return KeyMap(source, arch, weights, classifier, blocks=_pairs(ref, _seq("stages.{}.{}", depths)),
                  rules=tuple(_resnet_rules(classifier, deep_stem)))  # fmt: skip


def _tv_googlenet() -> KeyMap:
    return KeyMap(
        "torchvision",
        "googlenet",
        "IMAGENET1K_V1",
        "fc",
        rules=(
            _m(r"(?P<b>.+)\.bn", r"\g<b>.norm"),
            _m(r"(?P<b>.+\.conv|fc)", r"\g<b>"),
        ),
        skip=(r"aux[12]\..+",),  # torchvision's training-only auxiliary classifiers
    )


def _inception_v3(source: str, weights: str) -> KeyMap:
    return KeyMap(
        source, "inception_v3", weights, "fc",
        rules=(_m(r"(?P<b>.+)\.bn", r"\g<b>.norm"), _m(r"(?P<b>.+\.conv|fc)", r"\g<b>")),
        skip=(r"AuxLogits\..+",),  # the training-only auxiliary classifier
    )  # fmt: skip


def _timm_inception_v4() -> KeyMap:
    ours = [f"stem.{i}" for i in range(3)] + _seq("stages.{}.{}", (1, 6, 8, 4))
    return KeyMap(
        "timm", "inception_v4", "inception_v4.tf_in1k", "classifier.1",
        blocks=_pairs([f"features.{i}" for i in range(22)], ours),
        rules=(
            _m(r"(?P<b>.+)\.bn", r"\g<b>.norm"),
            _m(r"(?P<b>.+\.conv)", r"\g<b>"),
            _m("last_linear", "classifier.1"),
        ),
    )  # fmt: skip


def _tv_shufflenet_v2(width: str) -> KeyMap:
    unit = r"(?P<b>stage\d\.\d+)"
    return KeyMap(
        "torchvision", f"shufflenet_v2_{width}", "IMAGENET1K_V1", "fc",
        rules=(
            *_convbn(r"(?P<b>conv[15])", r"\g<b>"),
            *_convbn(unit + r"\.branch1", r"\g<b>.branch1.0", "0", "1"),
            *_convbn(unit + r"\.branch1", r"\g<b>.branch1.1", "2", "3"),
            *_convbn(unit + r"\.branch2", r"\g<b>.branch2.0", "0", "1"),
            *_convbn(unit + r"\.branch2", r"\g<b>.branch2.1", "3", "4"),
            *_convbn(unit + r"\.branch2", r"\g<b>.branch2.2", "5", "6"),
            _m("fc", "fc"),
        ),
    )  # fmt: skip


def _timm_mobilenet_v1() -> KeyMap:
    ours = _ours(1, (2, 2, 6, 2))
    return KeyMap(
        "timm", "mobilenetv1_100", "mobilenetv1_100.ra4_e3600_r224_in1k", "classifier.1",
        differences="timm's blocks use ReLU6 where ours use ReLU: outputs agree while no activation exceeds 6",
        blocks=_pairs(_seq("blocks.{}.{}", (1, 2, 2, 6, 2)), ours),
        rules=(
            *_timm_stem_head(head=None),
            _m(_ANY_BLOCK + r"\.conv_dw", r"\g<b>.dw.conv"),
            _m(_ANY_BLOCK + r"\.bn1", r"\g<b>.dw.norm"),
            _m(_ANY_BLOCK + r"\.conv_pw", r"\g<b>.pw.conv"),
            _m(_ANY_BLOCK + r"\.bn2", r"\g<b>.pw.norm"),
        ),
    )  # fmt: skip


def _timm_mobilenet_v2() -> KeyMap:
    return KeyMap(
        "timm", "mobilenetv2_100", "mobilenetv2_100.ra_in1k", "classifier.1",
        blocks=_pairs(_seq("blocks.{}.{}", (1, 2, 3, 4, 3, 3, 1)), _ours(1, (2, 3, 7, 4))),
        rules=(*_timm_stem_head(), *_timm_inverted_residual()),
    )  # fmt: skip


def _timm_efficientnet_b0() -> KeyMap:
    return KeyMap(
        "timm", "efficientnet_b0", "efficientnet_b0.ra_in1k", "classifier.1",
        blocks=_pairs(_seq("blocks.{}.{}", (1, 2, 2, 3, 3, 4, 1)), _ours(1, (2, 2, 6, 5))),
        rules=(*_timm_stem_head(), *_timm_inverted_residual()),
    )  # fmt: skip


def _timm_mobilenet_v4(arch: str, weights: str, depths: tuple[int, ...], fused: str = "") -> KeyMap:
    """``fused``: our blocks that are timm ``EdgeResidual`` (fused inverted residual: conv_exp, bn1, conv_pwl, bn2)."""
    blk = _IR_BLOCK
    fused_rules = [_m(rf"(?P<b>{fused})\.bn1", r"\g<b>.expand.norm")] if fused else []
    return KeyMap(
        "timm", arch, weights, "classifier.1",
        blocks=_pairs(_seq("blocks.{}.{}", (*depths, 1)), _ours(0, depths, ["head.0"])),
        rules=(
            *_timm_stem_head(head=None),
            *fused_rules,
            _m(r"(?P<b>stages\.\d+\.\d+|head\.0)\.conv_exp", r"\g<b>.expand.conv"),
            _m(blk + r"\.conv_pwl", r"\g<b>.project.conv"),
            _m(blk + r"\.bn2", r"\g<b>.project.norm"),
            _m(r"(?P<b>stages\.\d+\.\d+|head\.0)\.conv", r"\g<b>.conv"),
            _m(r"(?P<b>stages\.\d+\.\d+|head\.0)\.bn1", r"\g<b>.norm"),
            *_convbn(blk + r"\.dw_start", r"\g<b>.start_dw", "conv", "bn"),
            *_convbn(blk + r"\.pw_exp", r"\g<b>.expand", "conv", "bn"),
            *_convbn(blk + r"\.dw_mid", r"\g<b>.middle_dw", "conv", "bn"),
            *_convbn(blk + r"\.pw_proj", r"\g<b>.project", "conv", "bn"),
            (blk + r"\.layer_scale\.gamma", r"\g<b>.layer_scale.weight"),
            _m(blk + r"\.norm", r"\g<b>.norm"),
            _m(blk + r"\.attn\.(?P<n>query|key|value|output)\.proj", r"\g<b>.\g<n>.conv"),
            _m(blk + r"\.attn\.(?P<n>key|value)\.down_conv", r"\g<b>.\g<n>_down.conv"),
            _m(blk + r"\.attn\.(?P<n>key|value)\.norm", r"\g<b>.\g<n>_down.norm"),
            _m("conv_head", "head.2.conv"),
            _m("norm_head", "head.2.norm"),
        ),
    )  # fmt: skip


def _timm_ghostnet(arch: str, weights: str) -> KeyMap:
    blk = _ANY_BLOCK
    return KeyMap(
        "timm", arch, weights, "classifier.1",
        blocks=_pairs(_seq("blocks.{}.{}", (1, 1, 1, 1, 1, 1, 5, 1, 4, 1)), _ours(1, (2, 2, 6, 5), ["head.0"])),
        rules=(
            *_timm_stem_head(head=None),
            *_convbn(blk + r"\.(?P<g>ghost[12])\.primary_conv", r"\g<b>.\g<g>.primary"),
            *_convbn(blk + r"\.(?P<g>ghost[12])\.cheap_operation", r"\g<b>.\g<g>.cheap"),
            _m(blk + r"\.conv_dw", r"\g<b>.conv_dw.conv"),
            _m(blk + r"\.bn_dw", r"\g<b>.conv_dw.norm"),
            *_convbn(blk + r"\.shortcut", r"\g<b>.shortcut.0", "0", "1"),
            *_convbn(blk + r"\.shortcut", r"\g<b>.shortcut.1", "2", "3"),
            *_SE_TIMM,
            _m(r"head\.0\.conv", "head.0.conv"),
            _m(r"head\.0\.bn1", "head.0.norm"),
            _m("conv_head", "head.2.conv"),
        ),
    )  # fmt: skip


def _timm_xception() -> KeyMap:
    blk = _IR_BLOCK
    # rep.<i>: SeparableConv2d (conv1 = depthwise, pointwise) then its BN at i+1; block1 has no leading ReLU.
    return KeyMap(
        "timm", "legacy_xception", "legacy_xception.tf_in1k", "classifier.1",
        blocks=_pairs([f"block{i}" for i in range(1, 13)], _seq("stages.{}.{}", (1, 1, 9, 1))),
        rules=(
            _m("conv1", "stem.0.conv"), _m("bn1", "stem.0.norm"),
            _m("conv2", "stem.1.conv"), _m("bn2", "stem.1.norm"),
            _m(blk + r"\.skip", r"\g<b>.skip.conv"),
            _m(blk + r"\.skipbn", r"\g<b>.skip.norm"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.0\.conv1", r"\g<b>.convs.0.dw"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.0\.pointwise", r"\g<b>.convs.0.pw.conv"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.1", r"\g<b>.convs.0.pw.norm"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.3\.conv1", r"\g<b>.convs.1.dw"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.3\.pointwise", r"\g<b>.convs.1.pw.conv"),
            _m(r"(?P<b>stages\.0\.0)\.rep\.4", r"\g<b>.convs.1.pw.norm"),
            *[rule for i, r in enumerate((1, 4, 7)) for rule in (
                _m(blk + rf"\.rep\.{r}\.conv1", rf"\g<b>.convs.{i}.dw"),
                _m(blk + rf"\.rep\.{r}\.pointwise", rf"\g<b>.convs.{i}.pw.conv"),
                _m(blk + rf"\.rep\.{r + 1}", rf"\g<b>.convs.{i}.pw.norm"))],
            _m("conv3.conv1", "stages.3.1.dw"), _m("conv3.pointwise", "stages.3.1.pw.conv"), _m("bn3", "stages.3.1.pw.norm"),
            _m("conv4.conv1", "stages.3.2.dw"), _m("conv4.pointwise", "stages.3.2.pw.conv"), _m("bn4", "stages.3.2.pw.norm"),
            _m("fc", "classifier.1"),
        ),
    )  # fmt: skip


def _timm_resnest50d() -> KeyMap:
    blk = _IR_BLOCK
    return KeyMap(
        "timm", "resnest50d", "resnest50d.in1k", "classifier.1",
        blocks=_pairs(_seq("layer{}.{}", (3, 4, 6, 3), start=1), _seq("stages.{}.{}", (3, 4, 6, 3))),
        rules=(
            *_convbn(r"conv1", "stem.0", "0", "1"),
            *_convbn(r"conv1", "stem.1", "3", "4"),
            _m(r"conv1\.6", "stem.2.conv"),
            _m("bn1", "stem.2.norm"),
            _m(blk + r"\.conv(?P<i>[13])", r"\g<b>.conv\g<i>.conv"),
            _m(blk + r"\.bn(?P<i>[13])", r"\g<b>.conv\g<i>.norm"),
            _m(blk + r"\.conv2\.conv", r"\g<b>.conv2.conv.conv"),
            _m(blk + r"\.conv2\.bn0", r"\g<b>.conv2.conv.norm"),
            _m(blk + r"\.conv2\.(?P<n>fc1|fc2|bn1)", r"\g<b>.conv2.\g<n>"),
            *_convbn(blk + r"\.downsample", r"\g<b>.downsample.1", "1", "2"),
            _m("fc", "classifier.1"),
        ),
    )  # fmt: skip


def _timm_mobilevit(arch: str) -> KeyMap:
    blk = _ANY_BLOCK
    return KeyMap(
        "timm", arch, f"{arch}.cvnets_in1k", "classifier.1",
        blocks=_pairs(_seq("stages.{}.{}", (1, 3, 2, 2, 2)), _ours(1, (3, 2, 2, 2))),
        rules=(
            *_convbn(r"stem", "stem.0", "conv", "bn"),
            *_convbn(blk + r"\.conv1_1x1", r"\g<b>.expand", "conv", "bn"),
            *_convbn(blk + r"\.conv2_kxk", r"\g<b>.dw", "conv", "bn"),
            *_convbn(blk + r"\.conv3_1x1", r"\g<b>.project", "conv", "bn"),
            *_convbn(blk + r"\.(?P<n>conv_kxk|conv_proj|conv_fusion)", r"\g<b>.\g<n>", "conv", "bn"),
            _m(blk + r"\.conv_1x1", r"\g<b>.conv_1x1.conv"),
            _m(blk + r"\.transformer\.(?P<i>\d+)\.mlp\.(?P<n>fc[12])", r"\g<b>.transformer.\g<i>.\g<n>"),
            _m(blk + r"\.(?P<n>transformer\.\d+\.(?:norm[12]|attn\.qkv|attn\.proj)|norm)", r"\g<b>.\g<n>"),
            *_convbn(r"final_conv", "head.0", "conv", "bn"),
            _m(r"head\.fc", "classifier.1"),
        ),
    )  # fmt: skip


def _build_key_maps() -> dict[str, tuple[KeyMap, ...]]:
    maps: dict[str, list[KeyMap]] = {
        "mobilenet_v1": [_timm_mobilenet_v1()],
        "mobilenet_v2": [_tv_mobilenet_v2(), _timm_mobilenet_v2()],
        "mobilenet_v3_small": [_tv_mobilenet_v3("mobilenet_v3_small", 0, (1, 2, 5, 3), r"stages\.0\.0")],
        "mobilenet_v3_large": [_tv_mobilenet_v3("mobilenet_v3_large", 1, (2, 3, 6, 3), r"stem\.1")],
        "resnet18": [
            _resnet("torchvision", "resnet18", "IMAGENET1K_V1", (2, 2, 2, 2), "classifier"),
            _resnet("timm", "resnet18", "resnet18.a1_in1k", (2, 2, 2, 2), "classifier"),
        ],
        "googlenet": [_tv_googlenet()],
        "shufflenet_v2_x0_5": [_tv_shufflenet_v2("x0_5")],
        "shufflenet_v2_x1_0": [_tv_shufflenet_v2("x1_0")],
        "mobilenet_v4_conv_small": [
            _timm_mobilenet_v4("mobilenetv4_conv_small", "mobilenetv4_conv_small.e2400_r224_in1k", (2, 2, 6, 6))
        ],
        "mobilenet_v4_conv_medium": [
            _timm_mobilenet_v4(
                "mobilenetv4_conv_medium", "mobilenetv4_conv_medium.e500_r224_in1k", (1, 2, 8, 11), r"stages\.0\.0"
            )
        ],
        "mobilenet_v4_hybrid_medium": [
            _timm_mobilenet_v4(
                "mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_medium.e500_r224_in1k", (1, 2, 12, 16), r"stages\.0\.0"
            )
        ],
        "ghostnet_x0_5": [_timm_ghostnet("ghostnet_050", "")],
        "ghostnet_x1_0": [_timm_ghostnet("ghostnet_100", "ghostnet_100.in1k")],
        "ghostnet_x1_3": [_timm_ghostnet("ghostnet_130", "")],
        "inception_v3": [_inception_v3("torchvision", "IMAGENET1K_V1"), _inception_v3("timm", "inception_v3.tv_in1k")],
        "inception_v4": [_timm_inception_v4()],
        "resnet50_v1b": [
            _resnet("torchvision", "resnet50", "IMAGENET1K_V2", (3, 4, 6, 3), "classifier.1"),
            _resnet("timm", "resnet50", "resnet50.a1_in1k", (3, 4, 6, 3), "classifier.1"),
        ],
        "resnet50_v1d": [
            _resnet("timm", "resnet50d", "resnet50d.ra2_in1k", (3, 4, 6, 3), "classifier.1", deep_stem=True)
        ],
        "xception": [_timm_xception()],
        "resnest50": [_timm_resnest50d()],
        **{f"mobilevit_{s}": [_timm_mobilevit(f"mobilevit_{s}")] for s in ("xxs", "xs", "s")},
    }
    for variant in range(8):
        maps.setdefault(f"efficientnet_b{variant}", []).append(_tv_efficientnet(variant))
    maps["efficientnet_b0"].append(_timm_efficientnet_b0())
    return {name: tuple(m) for name, m in maps.items()}


KEY_MAPS: dict[str, tuple[KeyMap, ...]] = _build_key_maps()


def pretrained_sources(name: str) -> tuple[KeyMap, ...]:
    """The torchvision/timm references declared for zoo model ``name`` (empty when it has none)."""
    return KEY_MAPS.get(name, ())


def translate(state: Mapping[str, Tensor], key_map: KeyMap) -> tuple[dict[str, Tensor], list[str]]:
    """``state`` renamed by ``key_map``: (translated entries, reference keys no rule covers)."""
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for key, value in state.items():
        if key_map.skips(key):
            continue
        ours = key_map.translate(key)
        if ours is None:
            unmatched.append(key)
        else:
            out[ours] = value
    return out, unmatched


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a weights file: a state dict, or a checkpoint holding one (``state_dict``/``model``).

    ``.safetensors`` files need the ``safetensors`` package; everything else is read with
    ``torch.load(weights_only=True)``. A DDP ``module.`` or Lightning ``model.`` prefix is removed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {str(path)!r} does not exist; pass an existing file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise PretrainedWeightsError(
            f"{path} is a safetensors file but the safetensors package is missing; pip install safetensors"
        ) from err
    except Exception as err:  # noqa: BLE001 - any unreadable file is a user error with one message
        raise PretrainedWeightsError(
            f"cannot read pretrained weights {path} ({type(err).__name__}: {err}); "
            "pass a state dict saved with torch.save(model.state_dict(), path) or a .safetensors file"
        ) from err
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{path} does not hold a state dict (name -> tensor); save model.state_dict()")
    keys = list(obj)
    for prefix in ("module.", "model."):
        if keys and all(k.startswith(prefix) for k in keys):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
            break
    return dict(obj)


def _download(name: str, source: str, weights: str | None) -> tuple[dict[str, Tensor], str]:
    """A published state dict through torchvision's or timm's own loader (their caches); needs a network."""
    refs = [m for m in pretrained_sources(name) if m.source == source]
    if not refs:
        have = ", ".join(sorted({m.source for m in pretrained_sources(name)})) or "none"
        raise PretrainedWeightsError(
            f"model {name!r} has no {source} counterpart (references: {have}); pass a state dict file instead"
        )
    ref = refs[0]
    tag = weights or ref.weights
    if not tag:
        raise PretrainedWeightsError(
            f"{source} publishes no weights for {ref.arch}; pass a state dict file (e.g. one trained with {source})"
        )
    try:
        if source == "torchvision":
            import torchvision

            enum = torchvision.models.get_model_weights(ref.arch)
            state = enum[tag.split(".")[-1]].get_state_dict(progress=False)
        else:
            try:
                import timm
            except ImportError as err:
                raise PretrainedWeightsError(
                    "timm weights need the timm package: pip install timm (or pass a downloaded file)"
                ) from err
            state = timm.create_model(tag if "." in tag else ref.arch + "." + tag, pretrained=True).state_dict()
    except PretrainedWeightsError:
        raise
    except KeyError as err:
        raise PretrainedWeightsError(f"{source} has no weights {tag!r} for {ref.arch}; check the weight name") from err
    except Exception as err:  # noqa: BLE001 - network, hub and cache failures all mean "could not download"
        raise PretrainedWeightsError(
            f"could not download {source} weights {tag!r} for {ref.arch} ({type(err).__name__}: {err}). "
            "No network here? Download them where one exists (they land in the torch/timm cache) or save the "
            "state dict to a file and pass its path."
        ) from err
    return dict(state), f"{source}:{tag}"


def _resolve(name: str, spec: str | bool | Path) -> tuple[dict[str, Tensor], str]:
    """The state dict ``spec`` names: a file, ``torchvision[:WEIGHTS]``, ``timm[:name.tag]`` or ``True``."""
    if spec is True:
        refs = pretrained_sources(name)
        if not refs:
            raise PretrainedWeightsError(
                f"model {name!r} has no torchvision or timm counterpart; pass your own state dict file"
            )
        return _download(name, refs[0].source, None)
    text = str(spec)
    source, _, weights = text.partition(":")
    if source in ("torchvision", "timm") and not Path(text).exists():
        return _download(name, source, weights or None)
    return read_state_dict(text), text


def _match(model: nn.Module, name: str, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], KeyMap | None]:
    """``state`` in our key names: as it is (our own names) or through the first declared key map covering it."""
    ours = model.state_dict()
    candidates: list[tuple[KeyMap | None, dict[str, Tensor], list[str]]] = [
        (None, dict(state), [k for k in state if k not in ours])
    ]
    for key_map in pretrained_sources(name):
        translated, unmatched = translate(state, key_map)
        candidates.append((key_map, translated, unmatched + [k for k in translated if k not in ours]))
    for key_map, translated, problems in candidates:
        missing = [k for k in ours if k not in translated and not k.endswith(BN_STATS)]
        if not problems and not missing:
            return translated, key_map
    key_map, translated, problems = min(candidates, key=lambda c: len(c[2]))
    missing = [k for k in ours if k not in translated and not k.endswith(BN_STATS)]
    label = f"{key_map.source} {key_map.arch}" if key_map else "qat's own key names"
    refs = ", ".join(f"{m.source} {m.arch}" for m in pretrained_sources(name)) or "none declared"
    raise PretrainedWeightsError(
        f"the weights do not fit model {name!r} (closest: {label}; references: {refs}): "
        f"{len(problems)} keys unmatched, first: {', '.join(problems[:5]) or '-'}; "
        f"{len(missing)} of our keys missing, first: {', '.join(missing[:5]) or '-'}. "
        "The file probably belongs to another architecture: pick the model it was trained for."
    )


def _classifier_keys(model: nn.Module, key_map: KeyMap | None) -> set[str]:
    """Our final linear layer's keys: the declared one, or (own key names) the last ``nn.Linear``."""
    if key_map is not None:
        prefix = key_map.classifier
    else:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            return set()
        prefix = linears[-1]
    return {f"{prefix}.weight", f"{prefix}.bias"}


def load_pretrained(model: nn.Module, name: str, spec: str | bool | Path) -> dict[str, Any]:
    """Load ``spec``'s float weights into ``model`` (zoo model ``name``); returns what was loaded.

    A checkpoint with another class count loads everything but the classifier, which keeps
    its fresh initialisation (logged). Any other shape difference is an error.
    """
    state, origin = _resolve(name, spec)
    translated, key_map = _match(model, name, state)
    ours = model.state_dict()
    wrong = {k for k, v in translated.items() if v.shape != ours[k].shape}
    head = _classifier_keys(model, key_map) & wrong
    if wrong - head:
        bad = sorted(wrong - head)
        shapes = ", ".join(f"{k} {tuple(translated[k].shape)} vs ours {tuple(ours[k].shape)}" for k in bad[:3])
        raise PretrainedWeightsError(
            f"the weights ({origin}) have other shapes than model {name!r}: {shapes}; "
            "they belong to another width or variant: pick the matching model"
        )
    if head:
        classes = next(int(translated[k].shape[0]) for k in sorted(head))
        for k in head:
            translated.pop(k)
        log.info(
            "pretrained %s: %d classes in the checkpoint, %d in the model: classifier (%s) re-initialised",
            origin, classes, int(ours[next(iter(head))].shape[0]), ", ".join(sorted(head)),
        )  # fmt: skip
    model.load_state_dict(translated, strict=False)
    via = f"{key_map.source} {key_map.arch} key map" if key_map else "qat key names"
    log.info("pretrained weights %s loaded into %s (%s)", origin, name, via)
    return {"source": origin, "key_map": via, "reinitialised": sorted(head)}
