"""ShuffleNetV1: parameter counts vs the official megvii code, unit layout, stems, features in int8.

The full-size int8 contract runs for every registered model in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import (
    param_count,
)

from qat.models import create_model
from qat.models.shufflenet_v1 import STAGE_CHANNELS, ShuffleNetV1
from qat.nn.blocks.shufflenet import channel_shuffle
from qat.nn.blocks.shufflenet_v1 import ShuffleV1Block
from qat.nn.functional import AddReLU, Cat

MODELS = ["shufflenet_v1_g3_x0_5", "shufflenet_v1_g3_x1_0", "shufflenet_v1_g8_x1_0"]

# (groups, width): parameters at 1000 classes of megvii's ShuffleNet-Series/ShuffleNetV1/network.py
# (counted on that code: same parameter shapes, same order) and its README figure, rounded to 0.1M.
OFFICIAL = {
    (3, "x0_5"): (717_324, 0.7e6),
    (3, "x1_0"): (1_864_728, 1.9e6),
    (3, "x1_5"): (3_441_168, 3.4e6),
    (3, "x2_0"): (5_449_776, 5.4e6),
    (8, "x0_5"): (1_010_448, 1.0e6),
    (8, "x1_0"): (2_433_768, 2.4e6),
    (8, "x1_5"): (4_268_952, 4.3e6),
    (8, "x2_0"): (6_521_232, 6.5e6),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("key", list(OFFICIAL), ids=[f"g{g}_{w}" for g, w in OFFICIAL])
def test_params_equal_official_code(key: tuple[int, str]) -> None:
    """Equal to the official code's count; the README's 0.1M rounding is the only gap to its table."""
    ours, readme = OFFICIAL[key]
    assert param_count(ShuffleNetV1(STAGE_CHANNELS[key], key[0])) == ours
    assert abs(ours - readme) <= 0.05e6


@pytest.mark.parametrize("name", MODELS)
def test_registered_params(name: str) -> None:
    groups, width = int(name.split("_")[2][1:]), name.split("_", 3)[3]
    assert param_count(create_model(name)) == OFFICIAL[(groups, width)][0]


def test_unit_layout() -> None:
    """Dense first 1×1 only in stage 2's first unit; stride 2 concatenates, stride 1 adds (+ReLU, fused)."""
    model = create_model("shufflenet_v1_g3_x1_0")
    first = model.stages[1][0]
    assert first.conv1.conv.groups == 1 and first.conv1.conv.in_channels == 24
    assert first.conv2.conv.out_channels == 240 - 24 and isinstance(first.cat, Cat)
    assert isinstance(first.conv2.act, torch.nn.ReLU)
    for stage in model.stages[1:]:
        for i, unit in enumerate(stage):
            assert unit.conv2.conv.groups == 3 and unit.dwconv.conv.groups == unit.dwconv.conv.in_channels
            assert unit.dwconv.conv.in_channels == unit.conv2.conv.in_channels
            if i:
                assert isinstance(unit.add_relu, AddReLU) and isinstance(unit.conv2.act, torch.nn.Identity)
    assert model.stages[2][0].conv1.conv.groups == 3
    assert model.classifier[1].bias is None


def test_unit_stride2_equals_relu_of_concat() -> None:
    """On a non-negative (post-ReLU) input, ``cat(pool(x), relu(branch))`` is the paper's ``relu(cat(..))``."""
    torch.manual_seed(0)
    unit = ShuffleV1Block(24, 240, 2, 3, first_grouped=False).eval()
    x = torch.rand(2, 24, 8, 8)
    with torch.no_grad():
        branch = unit.conv2.norm(unit.conv2.conv(unit.dwconv(channel_shuffle(unit.conv1(x), 3))))
        expected = torch.relu(torch.cat([torch.nn.functional.avg_pool2d(x, 3, 2, 1), branch], 1))
        assert torch.allclose(unit(x), expected)


def test_unit_rejects_bad_channels() -> None:
    with pytest.raises(ValueError):
        ShuffleV1Block(240, 480, 1)
    with pytest.raises(ValueError):
        ShuffleV1Block(240, 248, 2, 3)
