"""Quantizable MobileNeXt (Zhou et al., 2020), in the layout of the authors' reference code.

``QuantStub → 3×3 conv (s2, ReLU6) → 20 sandglass blocks → pool → dropout → fc → DeQuantStub``.
ReLU6 after conv+BN fuses exactly (fixed [0, 6] grid). Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the stem conv *and* the first stride-2 block (32 → 96 channels) get stride 1
  (no parameters change), so the network down-samples 8× instead of 32× and a 32×32 input ends
  on a 4×4 map;
- ``include_top=False``: no classifier; ``forward`` returns the four stage outputs (strides 4, 8,
  16, 32; with the CIFAR stem 1, 2, 4, 8), one ``DeQuantStub`` each.
"""

from __future__ import annotations

from qat.models.base import StagedClassifier, check_stem, cifar_strides, pooled_top, split_stages, stem_conv
from qat.models.registry import register_model
from qat.nn.blocks.mobilenext import SandGlass
from qat.nn.se import make_divisible

__all__ = ["MobileNeXt", "mobilenext_x1_0"]

# (reduction t, out channels c, repeats n, stride s) -- the paper's table 2.
_CFG = (
    (2, 96, 1, 2),
    (6, 144, 1, 1),
    (6, 192, 3, 2),
    (6, 288, 3, 2),
    (6, 384, 4, 1),
    (6, 576, 4, 2),
    (6, 960, 3, 1),
    (6, 1280, 1, 1),
)


def _sandglass(c_in: int, c_out: int, stride: int, t: int, keep_3x3: bool, run_stride: int) -> SandGlass:
    """The reference's block variants: which depthwise convs a block has depends on its position.

    A ``t = 2`` block and stride-1 equal-width blocks (and single-block stages, ``keep_3x3``) have
    both; a widening stride-1 block has neither; a widening stride-2 block only the last one.
    ``run_stride`` is the stride actually used (1 for the CIFAR stem's first down-sampling block).
    """
    if t == 2:
        return SandGlass(c_in, c_out, run_stride, t)
    if c_in != c_out and not keep_3x3:
        return SandGlass(c_in, c_out, run_stride, t, dw_in=False, dw_out=stride == 2)
    return SandGlass(c_in, c_out, 1, t)


class MobileNeXt(StagedClassifier):
    """MobileNeXt at ``width`` (channels ``make_divisible(c·width, 8)``; the 1280 block stays 1280)."""

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.2,
    ) -> None:
        cifar = check_stem(stem)
        divisor = 4 if width == 0.1 else 8
        c = make_divisible(32 * width, divisor)
        stem_mod = stem_conv(c, cifar, "relu6")
        nominal = [s for *_, s in _CFG]
        blocks, downsamples = [], []
        for (t, c_cfg, n, s), run in zip(_CFG, cifar_strides(nominal, cifar)):
            out = 1280 if c_cfg == 1280 and width < 1 else make_divisible(c_cfg * width, divisor)
            blocks += [
                _sandglass(c, out, s, t, n == 1 and s == 1, run),
                *(SandGlass(out, out, 1, t) for _ in range(n - 1)),
            ]
            downsamples += [s == 2] + [False] * (n - 1)
            c = out
        _, stages = split_stages(blocks, downsamples)
        head, classifier = pooled_top(include_top, c, num_classes, dropout)
        channels = [stage[-1].expand.conv.out_channels for stage in stages]
        super().__init__(stem_mod, stages, channels, head, classifier, input_scale)


@register_model
def mobilenext_x1_0(num_classes: int = 1000, **kwargs) -> MobileNeXt:
    """MobileNeXt 1.0×: 3,535,416 parameters (as the authors' code builds it) vs the paper's 3.4M: +4.0 %."""
    return MobileNeXt(num_classes=num_classes, width=1.0, **kwargs)
