"""GoogLeNet: equal to torchvision's (parameters, weights, outputs), stems, features in int8.

The full-size int8 contract runs for every registered model in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from contract import (
    param_count,
)

from qat.models import create_model
from qat.nn.blocks.googlenet import Inception

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision() -> torch.nn.Module:
    return torchvision.models.googlenet(aux_logits=False, init_weights=True)


def test_params_equal_torchvision() -> None:
    ours, ref = create_model("googlenet"), _torchvision()
    assert param_count(ours) == param_count(ref) == 6_624_904
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]
    ref_bn = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    our_bn = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(our_bn) == len(ref_bn) and all(m.eps == 1e-3 for m in our_bn + ref_bn)
    assert all(m.bias is None for m in ours.modules() if isinstance(m, torch.nn.Conv2d))


def test_matches_torchvision_with_its_weights() -> None:
    """Same module names up to ``bn`` → ``norm``: torchvision's state dict loads and gives its outputs."""
    ref, ours = _torchvision().eval(), create_model("googlenet").eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    ours.load_state_dict({k.replace(".bn.", ".norm."): v for k, v in ref.state_dict().items()})
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), ref(x), atol=1e-5)


def test_inception_output_channels() -> None:
    block = Inception(192, 64, 96, 128, 16, 32, 32).eval()
    with torch.no_grad():
        assert block(torch.rand(1, 192, 7, 7)).shape == (1, block.out_channels, 7, 7) == (1, 256, 7, 7)
