"""Inception v2 (BN-Inception), v3 and v4: parameter counts and weights vs their references."""

from __future__ import annotations

import pytest
import torch
import torchvision
from contract import assert_loads_by_order_and_agrees, assert_same_outputs, param_count, randomize_batchnorm

from qat.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _torchvision_v3() -> torch.nn.Module:
    return torchvision.models.inception_v3(aux_logits=False, init_weights=False, transform_input=False)


def test_v3_params_equal_torchvision_without_aux_logits() -> None:
    ours, ref = create_model("inception_v3"), _torchvision_v3()
    assert param_count(ours) == param_count(ref) == 23_834_568
    assert [p.shape for p in ours.parameters()] == [p.shape for p in ref.parameters()]


def test_v3_matches_torchvision_with_its_weights() -> None:
    """Same module names up to ``bn`` → ``norm``: torchvision's state dict loads and gives its outputs."""
    ref = randomize_batchnorm(_torchvision_v3().eval())
    ours = create_model("inception_v3").eval()
    ours.load_state_dict({k.replace(".bn.", ".norm."): v for k, v in ref.state_dict().items()})
    assert_same_outputs(ours, ref, 96)


def test_v4_params_equal_timm() -> None:
    with torch.device("meta"):
        assert param_count(create_model("inception_v4")) == 42_679_816


def test_v4_loads_timm_weights_by_order_and_agrees() -> None:
    timm = pytest.importorskip("timm")
    assert_loads_by_order_and_agrees(create_model("inception_v4"), timm.create_model("inception_v4"), 96)


def test_bn_inception_params_equal_the_caffe_reference_less_its_conv_biases() -> None:
    """Cadene's port of the released Caffe BN-Inception: 11,295,240 at 1000 classes, a bias on every conv."""
    model = create_model("bn_inception")
    conv_biases = sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert param_count(model) == 11_285_224
    assert param_count(model) + conv_biases == 11_295_240
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Conv2d))
