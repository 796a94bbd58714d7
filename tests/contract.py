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
#: Models whose ImageNet stem cannot take 32x32 (unpadded reductions) run the same layers with the CIFAR stem.
SMALL_INPUT_KWARGS: dict[str, dict[str, Any]] = {name: {"stem": "cifar"} for name in ("inception_v3", "inception_v4")}


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


def load_by_order(dst: nn.Module, src: nn.Module) -> None:
    """Copy ``src``'s state dict into ``dst`` entry by entry: same layers in the same order, or fail."""
    dst_sd, src_sd = dst.state_dict(), src.state_dict()
    assert len(dst_sd) == len(src_sd)
    copied = {}
    for (k_dst, v_dst), (k_src, v_src) in zip(dst_sd.items(), src_sd.items()):
        assert v_dst.shape == v_src.shape, (k_dst, k_src)
        copied[k_dst] = v_src
    dst.load_state_dict(copied)


def assert_same_outputs(ours: nn.Module, reference: nn.Module, size: int) -> None:
    """Both models give the same output (up to float rounding) on one random ``size``² input in [-1, 1)."""
    x = torch.rand(1, 3, size, size) * 2 - 1
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def assert_loads_by_order_and_agrees(ours: nn.Module, reference: nn.Module, size: int) -> None:
    """``reference``, its BN randomised, loads into ``ours`` by order and both give the same output."""
    reference = randomize_batchnorm(reference.eval())
    load_by_order(ours.eval(), reference)
    assert_same_outputs(ours, reference, size)


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so BN eps/momentum and placement matter."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.002, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


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
