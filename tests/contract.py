"""The int8 contract every model test asserts, in one place.

Per op, the int8 model must equal the fake-quant model it was converted from, up to float32
rounding near-ties (127.4999 vs 127.5): ``replay_ops`` feeds each int8 op its own int8 inputs
through the matching fake-quant op (a fused SE gate as a whole: its parts do not run). Measured over
the zoo at 32x32 (tests/test_models.py's cases, BN folded): at most 10 differing elements in 8.9 M
(EfficientNet-B7), one grid step each, on an AVX-512 VNNI EPYC (2026-11-30, gates fused); at most 4
in 2.3 M on an AVX2 one. At the output of a deep
random-init net one such flip can spread (measured up to 0.116 rel_l2 on ESPNet-C, 0.076 on
HENet on the AVX2 machine), hence the looser output bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from qat.quant.verify import VerifyResult

OP_MISMATCH_FRACTION = 1e-4
OUTPUT_REL_L2 = 0.15


def assert_int8_contract(r: VerifyResult, min_compared: int = 10_000, output_rel_l2: float = OUTPUT_REL_L2) -> None:
    """``check_model`` clean, nothing left in float, int8 == fake-quant per op, output close."""
    assert r.check.ok and not r.check.warnings, str(r.check)
    assert not r.unconverted, r.unconverted
    assert r.ops["compared"] >= min_compared, r.ops
    assert r.ops["mismatched"] <= OP_MISMATCH_FRACTION * r.ops["compared"], r.ops
    assert r.ops["worst_steps"] <= 1.0 + 1e-3, r.ops
    assert r.agreement["rel_l2"] <= output_rel_l2, r.agreement


def settle_batchnorm(model: nn.Module, x: Tensor) -> nn.Module:
    """Give a random-init model's BatchNorms the running statistics of ``x`` (one train pass, momentum 1).

    Fresh statistics (mean 0, var 1, nudged by a pass or two) leave a deep net without a BN in
    every branch unnormalised in eval mode: ESPNet's random-init logits reach 1e3 and one rounding
    flip among 10^6 elements moves them by a third. A trained net's statistics match its data;
    this gives a test net the same.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def assert_input_scale_and_stem_arguments(name: str) -> None:
    """``input_scale`` fixes the QuantStub grid (``None`` observes it); an unknown ``stem`` is refused."""
    import pytest

    from qat.models import create_model
    from qat.nn.stubs import QuantStub

    fixed = create_model(name, num_classes=10)
    observed = create_model(name, num_classes=10, input_scale=None)
    assert next(m for m in fixed.modules() if type(m) is QuantStub).fixed_qparams == (1 / 128, 128)
    assert next(m for m in observed.modules() if type(m) is QuantStub).fixed_qparams is None
    with pytest.raises(ValueError):
        create_model(name, stem="tiny")


def assert_logits_at_224(name: str) -> None:
    """A 1x3x224x224 image gives 1000 logits."""
    import torch

    from qat.models import create_model

    with torch.no_grad():
        assert create_model(name).eval()(torch.rand(1, 3, 224, 224) * 2 - 1).shape == (1, 1000)


def stem_feature_sizes(name: str) -> tuple[list[int], list[int], list[int]]:
    """Feature-map sizes at 64 px (ImageNet stem) and 32 px (CIFAR stem) and the CIFAR channels.

    Asserts what holds for every model: both stems have the same parameters, the CIFAR features
    carry ``feature_channels`` and the CIFAR classifier gives logits at 32x32.
    """
    import torch

    from qat.models import create_model

    imagenet = create_model(name, num_classes=10, include_top=False).eval()
    cifar = create_model(name, num_classes=10, include_top=False, stem="cifar").eval()
    assert param_count(imagenet) == param_count(cifar)
    with torch.no_grad():
        big = imagenet(torch.rand(1, 3, 64, 64) * 2 - 1)
        small = cifar(torch.rand(2, 3, 32, 32) * 2 - 1)
        logits = create_model(name, num_classes=10, stem="cifar").eval()(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert logits.shape == (2, 10)
    assert [f.shape[1] for f in small] == cifar.feature_channels
    return [f.shape[-1] for f in big], [f.shape[-1] for f in small], cifar.feature_channels


def assert_features_verify_int8(
    model: str | Callable[[], nn.Module], sizes: list[int], stem: str = "cifar", **verify_kwargs: Any
) -> None:
    """``include_top=False`` at 32x32: each feature map leaves through its own DeQuantStub, meets the
    int8 contract and has the given spatial ``sizes``. ``model``: a registered name (built with
    ``stem``) or a constructor, called after seeding."""
    from qat.models import create_model
    from qat.quant import verify_model

    torch.manual_seed(0)
    net = create_model(model, include_top=False, stem=stem) if isinstance(model, str) else model()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    r = verify_model(net, x, **verify_kwargs)
    assert_int8_contract(r)
    assert [f.shape[-1] for f in r.int8_model(x)] == sizes
