"""Lightweight-zoo models: parameter counts vs references, torchvision weights, Lite-HRNet's features in int8.

The full-size int8 contract runs for every registered model in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from contract import assert_features_verify_int8, param_count

from qat.models import create_model
from qat.models.lcnet import PPLCNet
from qat.models.litehrnet import LiteHRNet
from qat.models.shufflenet import STAGE_CHANNELS, ShuffleNetV2

# name: (our count at 1000 classes, published figure, allowed relative gap to it). Lite-HRNet's
# figure is for the backbone (stem, stages, iterative head), counted with include_top=False.
PAPER = {
    "ghostnet_x1_0": (5_182_508, 5.2e6, 0.005),  # GhostNet paper, table 7: -0.3 %
    "mobilenext_x1_0": (3_535_416, 3.4e6, 0.045),  # MobileNeXt paper: +4.0 % (same count as the authors' code)
    "pp_lcnet_x1_0": (2_952_520, 3.0e6, 0.02),  # PaddleClas / paper table: 3.0M, -1.6 %
    "mobilenet_v2_ca": (3_950_408, 3.95e6, 0.001),  # CA paper: 3.95M, equal at its precision
    "mobilenet_v2_eca": (3_504_897, 3.34e6, 0.05),  # ECA authors' 3.34M: +4.9 %
    "litehrnet_18": (1_130_072, 1.1e6, 0.03),  # Lite-HRNet paper: 1.1M, +2.7 %
    "litehrnet_30": (1_763_020, 1.8e6, 0.025),  # Lite-HRNet paper: 1.8M, -2.1 %
    "mobilenet_v2_triplet": (3_505_892, 3.506e6, 0.0001),  # triplet-attention README (k = 3): 3.506M
    "mobilenet_v2_sa": (3_506_000, 3_504_872 + 1_128, 0),  # torchvision's mobilenet_v2 + 3·C/4 per block
    "ghostnet_x0_5": (2_587_292, 2.6e6, 0.005),  # GhostNet paper, table 7: -0.5 %
    "ghostnet_x1_3": (7_358_820, 7.3e6, 0.01),  # GhostNet paper, table 7: +0.8 %
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("width", list(STAGE_CHANNELS))
def test_shufflenet_params_equal_torchvision(width: str) -> None:
    ours = ShuffleNetV2(STAGE_CHANNELS[width])
    ref = getattr(torchvision.models, f"shufflenet_v2_{width}")()
    assert param_count(ours) == param_count(ref)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    if width in ("x0_5", "x1_0"):
        assert param_count(create_model(f"shufflenet_v2_{width}")) == param_count(ref)


def test_shufflenet_matches_torchvision_with_its_weights() -> None:
    """Same layers in the same order: torchvision's weights load by position and give its outputs."""
    ref = torchvision.models.shufflenet_v2_x0_5().eval()
    ours = create_model("shufflenet_v2_x0_5").eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ref_state, our_keys = list(ref.state_dict().values()), list(ours.state_dict())
    assert len(ref_state) == len(our_keys)
    ours.load_state_dict(dict(zip(our_keys, ref_state)))
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("name", list(PAPER))
def test_params_vs_paper(name: str) -> None:
    ours, paper, tolerance = PAPER[name]
    model = create_model(name, include_top=not name.startswith("litehrnet"))
    assert param_count(model) == ours
    assert abs(ours / paper - 1) <= tolerance


@pytest.mark.parametrize(
    ("build", "ours", "paper"),
    [
        (lambda: PPLCNet(scale=0.25), 1_521_184, 1.5e6),
        (lambda: PPLCNet(scale=0.5), 1_879_576, 1.9e6),
        (lambda: PPLCNet(scale=2.5), 9_017_560, 9.0e6),
    ],
    ids=["lcnet_0.25", "lcnet_0.5", "lcnet_2.5"],
)
def test_other_widths_vs_paper(build, ours: int, paper: float) -> None:
    assert param_count(build()) == ours
    assert abs(ours / paper - 1) <= 0.025


def test_litehrnet_features_verify_int8() -> None:
    """``include_top=False``: every branch output leaves through its own DeQuantStub, all in int8.

    Lite-HRNet with one module per stage has every block and branch count of ``litehrnet_18`` at a
    third of its cost (the other backbones' check is in tests/test_models_generic.py).
    """
    assert_features_verify_int8(lambda: LiteHRNet((1, 1, 1), include_top=False, stem="cifar"), [32, 16, 8, 4])
