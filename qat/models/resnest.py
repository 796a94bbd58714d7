"""Quantizable ResNeSt (Zhang et al., 2020) in the layout of the official code / timm's ``resnest50d``.

``QuantStub → deep stem (3×3 convs 32 s2, 32, 64, each BN+ReLU) → 3×3 s2 max-pool → layer1-4
(split-attention bottlenecks: radix 2, cardinality 1, bottleneck width 64, avd, avg-down
shortcuts) → global pool → fc → DeQuantStub``. ``resnest50`` (layers 3, 4, 6, 3) has 27,483,240
parameters at 1000 classes, equal to the official ResNeSt-50 (the paper's 27.5M) and timm's
``resnest50d``, with the same parameter tensors in the same order. Keyword arguments:

- ``input_scale`` (1/128): fixed input grid for inputs in [-1, 1); ``None`` observes it;
- ``stem="cifar"``: the first stem conv runs at stride 1 and the max-pool is dropped (no
  parameters change), so the network down-samples 8× instead of 32× and a 32×32 input ends on
  a 4×4 map;
- ``include_top=False``: no pool/fc; ``forward`` returns the outputs of layer1-4 (256, 512,
  1024, 2048 channels; strides 4, 8, 16, 32, with the CIFAR stem 1, 2, 4, 8), one
  ``DeQuantStub`` each.

int8: see :mod:`qat.nn.blocks.resnest` -- the split sum, global pool, fc1-BN-ReLU, fc2, radix
softmax and weighted sum are all int8 ops; the avd and avg-down poolings round once to their
own observed grid.
"""

from __future__ import annotations

from collections.abc import Sequence

from qat.models.base import StagedClassifier, bottleneck_stages, check_stem, deep_stem, init_weights, pooled_top
from qat.models.registry import register_model
from qat.nn.blocks.resnest import ResNeStBottleneck

__all__ = ["ResNeSt"]

_PLANES = (64, 128, 256, 512)


class ResNeSt(StagedClassifier):
    """ResNeSt-D with ``layers`` bottlenecks per stage and a deep stem of width ``stem_width``.

    ``layers=(1, 1, 1, 1)`` and ``(2, 2, 2, 2)`` give the official ResNeSt-14 (10,611,688
    parameters) and ResNeSt-26 (17,069,448).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        stem_width: int = 32,
        radix: int = 2,
        cardinality: int = 1,
        base_width: int = 64,
        stem: str = "imagenet",
        include_top: bool = True,
        input_scale: float | None = 1 / 128,
        dropout: float = 0.0,
    ) -> None:
        if len(layers) != 4:
            raise ValueError(f"layers needs 4 block counts, got {len(layers)}")
        cifar = check_stem(stem)
        stem_mod = deep_stem(stem_width, cifar)
        stages, channels = bottleneck_stages(
            lambda c_in, planes, stride: ResNeStBottleneck(c_in, planes, stride, radix, cardinality, base_width),
            layers,
            _PLANES,
            stem_width * 2,
            ResNeStBottleneck.expansion,
        )
        head, classifier = pooled_top(include_top, channels[-1], num_classes, dropout)
        super().__init__(stem_mod, stages, channels, head, classifier, input_scale)
        init_weights(self, linear=None)


@register_model
def resnest50(num_classes: int = 1000, **kwargs) -> ResNeSt:
    """ResNeSt-50 (2s1x64d): 27,483,240 parameters, equal to the official code and timm's ``resnest50d``."""
    return ResNeSt((3, 4, 6, 3), num_classes=num_classes, **kwargs)
