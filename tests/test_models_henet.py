"""HENet TinyM / TinyE: parameter counts, multi-scale features, stems, attention blocks in int8.

The full-size int8 contract runs for every registered model in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import assert_int8_contract
from torch import Tensor

from qat.models import create_model, list_models
from qat.models.henet import HENet
from qat.quant import verify_model

# Counted once from the models built here (1000 classes); Horizon publishes no parameter count.
PARAMS = {"henet_tinym": 8_632_328, "henet_tinye": 8_479_504}


def _inputs(size: int) -> Tensor:
    return torch.rand(2, 3, size, size) * 2 - 1


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name: str) -> None:
    assert name in list_models()
    count = sum(p.numel() for p in create_model(name).parameters())
    assert count == PARAMS[name]
    assert sum(p.numel() for p in create_model(name, stem="cifar").parameters()) == count


def test_small_henet_with_attention_features_int8() -> None:
    """A reduced HENet with attention blocks at stage tails, returning dequantized multi-scale features."""
    model = HENet(
        block_nums=(1, 1, 2, 2),
        embed_dims=(16, 32, 48, 64),
        block_cls=("DWCB", "DWCB", "AltDWCB", "DWCB"),
        attention_block_num=(0, 0, 1, 1),
        include_top=False,
        stage_out_norm=True,
    )
    r = verify_model(model, _inputs(32))
    assert_int8_contract(r)
    with torch.no_grad():
        assert [f.shape[1] for f in r.int8_model(_inputs(32))] == [16, 32, 48, 64]


def test_bad_config_rejected() -> None:
    with pytest.raises(ValueError, match="stem"):
        create_model("henet_tinym", stem="coco")
    with pytest.raises(ValueError, match="block_cls"):
        HENet(block_nums=(1, 1), embed_dims=(16, 32), block_cls=("DWCB",))
