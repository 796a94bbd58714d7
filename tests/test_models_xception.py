"""Xception: parameter count vs the reference, stems, feature outputs, every ReLU in int8.

The full int8 contract (float/QAT/int8 at 32×32) runs for ``xception`` in tests/test_models.py.
"""

from __future__ import annotations

import pytest
from contract import (
    param_count,
)
from torch import nn

from qat.models import create_model
from qat.nn.blocks.xception import XceptionBlock
from qat.quant.fuse import collect_patterns

# Keras' Xception, Cadene's pretrainedmodels / timm's legacy ``xception``: same tensors, same count.
REFERENCE_PARAMS = 22_855_952


pytestmark = pytest.mark.usefixtures("one_thread")


def test_params_equal_reference() -> None:
    model = create_model("xception")
    assert param_count(model) == REFERENCE_PARAMS
    assert param_count(create_model("xception", stem="cifar")) == REFERENCE_PARAMS
    # the classifier is the only class-dependent part: 2048 x 1000 weights + 1000 biases
    assert REFERENCE_PARAMS - param_count(create_model("xception", include_top=False)) == 2048 * 1000 + 1000


def test_every_relu_fuses_or_opens_a_block() -> None:
    """Each ReLU is fused into conv+BN, except the one opening each of blocks 2-12 (pre-activation)."""
    model = create_model("xception")
    fused = {p[-1] for p in collect_patterns(model)}
    standalone = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n not in fused]
    openers = [f"{n}.act" for n, m in model.named_modules() if isinstance(m, XceptionBlock) and n != "stages.0.0"]
    assert standalone == openers and len(openers) == 11
    # fused: stem 2, entry blocks 1 each, middle blocks 2 each, exit block 1, exit separable convs 2
    assert len(fused & {n for n, m in model.named_modules() if isinstance(m, nn.ReLU)}) == 2 + 3 + 8 * 2 + 1 + 2
