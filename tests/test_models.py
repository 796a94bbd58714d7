"""The zoo-wide contract, driven by the registry: every registered model quantizes to int8."""

from __future__ import annotations

import pytest
import torch
from contract import SMALL_INPUT_KWARGS, assert_int8_contract

from qat.models import create_model, list_models
from qat.quant import verify_model

MODELS = list_models()


def test_registry_errors_name_close_matches() -> None:
    with pytest.raises(KeyError, match="Did you mean mobilenet_v2"):
        create_model("mobilenet_v22")
    assert "henet_tinym" in MODELS and "mobilenet_v2" in MODELS


#: BN as QAT runs it by default (folded into the convs) for every model; tracked for a few.
CASES = [(name, "fold") for name in MODELS] + [(n, "track") for n in ("henet_tinym", "mobilenet_v2", "litehrnet_18")]


@pytest.mark.parametrize(("name", "bn"), CASES)
def test_model_float_fakequant_int8(name: str, bn: str) -> None:
    """float fwd/bwd, check_model clean, prepare_qat (+ BN fold), 2 SGD steps, convert: int8 equals fake-quant."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **SMALL_INPUT_KWARGS.get(name, {}))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    r = verify_model(model, x, steps=2, bn=bn)
    assert_int8_contract(r)
    assert r.int8_model(x).shape == (2, 10)
