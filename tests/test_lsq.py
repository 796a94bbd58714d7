"""Learned step sizes (LSQ): gradient, positivity, exact convert, checkpoints and the pipeline option."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from contract import OP_MISMATCH_FRACTION
from torch import Tensor, nn

from qat.quant import (
    LearnedScaleFakeQuantize,
    calibrate,
    compare_outputs,
    convert,
    disable_observer,
    prepare_calibration,
    replay_ops,
    start_qat,
    unconverted_layers,
)
from qat.quant.backend import FixedQParamsFakeQuantize, MinMaxObserver
from qat.quant.fakequant import FastFakeQuantize


def _hand_module(scale: float, zero_point: int) -> LearnedScaleFakeQuantize:
    fq = LearnedScaleFakeQuantize(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8)
    with torch.no_grad():
        fq.scale.fill_(scale)
        fq.zero_point.fill_(zero_point)
    fq.disable_observer()
    return fq


def test_step_size_gradient_matches_lsq_by_hand() -> None:
    # s = 0.1, zero point 5, grid 0..255: codes x/s + 5 = -2 (below), 6.2 -> 6, 7.6 -> 8, 305 (above).
    fq = _hand_module(0.1, 5)
    x = torch.tensor([[-0.7, 0.12, 0.26, 30.0]], requires_grad=True)
    y = fq(x)
    torch.testing.assert_close(y.detach(), torch.tensor([[-0.5, 0.1, 0.3, 25.0]]))
    y.sum().backward()
    # d y / d s: quant_min - zp = -5 | round(1.2) - 1.2 = -0.2 | round(2.6) - 2.6 = 0.4 | quant_max - zp = 250,
    # times LSQ's g = 1 / sqrt(N * Qp) with N = 4 features per sample, Qp = 255 - 5 = 250.
    expected = (-5 - 0.2 + 0.4 + 250) / math.sqrt(4 * 250)
    assert fq.scale.requires_grad and isinstance(fq.scale, nn.Parameter)
    assert float(fq.scale.grad) == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 1.0, 1.0, 0.0]]))


def test_per_channel_gradient_equals_torchs_learnable_kernel() -> None:
    w = torch.randn(6, 3, 3, 3)
    fq = LearnedScaleFakeQuantize.from_fake_quant(_observed_weight_fake_quant(w))
    fq.disable_observer()
    weights = w.clone().requires_grad_()
    upstream = torch.randn_like(w)
    (fq(weights) * upstream).sum().backward()
    ref_w = w.clone().requires_grad_()
    ref_s = fq.scale.detach().clone().requires_grad_()
    g = 1.0 / math.sqrt(27 * 63)  # 27 weights per channel, Qp = 63 (x86's 7-bit weights)
    ref = torch._fake_quantize_learnable_per_channel_affine(ref_w, ref_s, torch.zeros(6), 0, -63, 63, g)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(fq.scale.grad, ref_s.grad)
    torch.testing.assert_close(weights.grad, ref_w.grad)


def _observed_weight_fake_quant(w: Tensor) -> FastFakeQuantize:
    from qat.quant import get_qconfig

    fq = get_qconfig("x86").weight()()
    fq(w)
    return fq


def test_scale_stays_positive_and_can_recover() -> None:
    fq = _hand_module(0.1, 0)
    with torch.no_grad():
        fq.scale.fill_(-0.5)  # an optimizer step overshot
    scale, _ = fq.calculate_qparams()
    assert float(scale) > 0
    x = torch.rand(2, 8) * 4
    y = fq(x)
    assert torch.isfinite(y).all()
    (y - x).square().sum().backward()
    assert fq.scale.grad is not None and float(fq.scale.grad) < 0, "the gradient still pushes the scale up"


def _learned_model(user_net: nn.Module, x: Tensor, weights: bool = True) -> nn.Module:
    model = calibrate(prepare_calibration(user_net), [x, x * 0.8])
    return start_qat(model, learn_activation_scales=True, learn_weight_scales=weights)


def test_learned_scales_train_by_gradient_not_by_observer(user_net: nn.Module, x: Tensor) -> None:
    model = _learned_model(user_net, x)
    learned = {n: m for n, m in model.named_modules() if isinstance(m, LearnedScaleFakeQuantize)}
    assert "dw.conv.activation_post_process" in learned and "dw.conv.weight_fake_quant" in learned
    fixed = [m for m in model.modules() if isinstance(m, FixedQParamsFakeQuantize)]
    assert fixed, "the model has fixed grids (scaled QuantStub, ReLU6 clamp)"
    assert not any(isinstance(m, LearnedScaleFakeQuantize) for m in fixed)
    params = {id(p) for p in model.parameters()}
    assert all(id(m.scale) in params and not bool(m.observer_enabled) for m in learned.values())
    act = learned["dw.conv.activation_post_process"]
    observed = (act.activation_post_process.min_val.clone(), act.activation_post_process.max_val.clone())
    before = {n: m.scale.detach().clone() for n, m in learned.items()}
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for step in range(3):
        loss = nn.functional.cross_entropy(model(x * 1.5), torch.arange(len(x)) % 10)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grad, start = act.scale.grad.clone(), act.scale.detach().clone()
        opt.step()
        if step == 0:
            torch.testing.assert_close(act.scale.detach(), start - lr * grad)  # moved by SGD on its gradient
    moved = [n for n, m in learned.items() if not torch.equal(m.scale.detach(), before[n])]
    assert len(moved) == len(learned), set(learned) - set(moved)
    assert all(bool((m.calculate_qparams()[0] > 0).all()) for m in learned.values())
    assert torch.equal(act.activation_post_process.min_val, observed[0])  # the observer did not run
    assert torch.equal(act.activation_post_process.max_val, observed[1])


def test_learned_scales_convert_exactly(user_net: nn.Module, x: Tensor) -> None:
    model = _learned_model(user_net, x)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), torch.arange(len(x)) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    fq = disable_observer(model.eval())
    q = convert(fq)
    act = fq.dw.conv.activation_post_process
    assert float(q.dw.conv.scale) == float(act.effective_scale()), "int8 runs the learned output grid"
    torch.testing.assert_close(
        q.dw.conv.weight().q_per_channel_scales().float(), fq.dw.conv.weight_fake_quant.effective_scale()
    )
    assert unconverted_layers(q) == []
    ops = replay_ops(fq, q, x)
    assert ops["compared"] > 1000, ops
    assert ops["mismatched"] <= OP_MISMATCH_FRACTION * ops["compared"], ops
    assert ops["worst_steps"] <= 1.0 + 1e-3, ops
    assert compare_outputs(fq, q, [x])["rel_l2"] < 0.05


def test_learned_state_dict_round_trips(user_net: nn.Module, x: Tensor) -> None:
    model = _learned_model(user_net, x)
    with torch.no_grad():
        model.dw.conv.activation_post_process.scale.mul_(1.25)
    state = model.state_dict()
    assert all(not isinstance(v, nn.Parameter) for v in state.values())
    fixed_keys = set(start_qat(calibrate(prepare_calibration(user_net), [x])).state_dict())
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = _learned_model(user_net, x * 0.5)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    loaded, saved = fresh.dw.conv.activation_post_process.scale, model.dw.conv.activation_post_process.scale
    assert torch.equal(loaded.detach(), saved.detach()) and isinstance(loaded, nn.Parameter)
    assert fixed_keys == set(state), "the learned model keeps FakeQuantize's state dict keys"


def test_pipeline_learns_activation_scales(tmp_path: Path) -> None:
    from test_pipeline import FAST, QAT_FAST

    from qat.pipeline.config import compose_config
    from qat.pipeline.errors import ConfigError
    from qat.pipeline.plan import QuantPlan
    from qat.pipeline.stages import run_pipeline

    report = run_pipeline(
        compose_config([*FAST, *QAT_FAST, "quant.activation_scales=learn", "quant.weight_scales=learn"]), tmp_path
    )
    assert report["int8_vs_fake_quant"]["reference"] == "qat"
    assert report["int8_vs_fake_quant"]["top1"] >= 0.9
    calibrated = torch.load(tmp_path / "calib" / "calibrated.pt", weights_only=True)
    trained = torch.load(tmp_path / "qat" / "last.ckpt", weights_only=True)["state_dict"]
    keys = [k for k in calibrated if k.endswith("activation_post_process.scale") and calibrated[k].numel() == 1]
    moved = [k for k in keys if not torch.equal(trained["model." + k], calibrated[k])]
    assert moved, "no activation scale moved in QAT with quant.activation_scales=learn"
    for key in moved:  # moved by gradient: their observers (the 'update' path) never ran in QAT
        observer = key.removesuffix("scale") + "activation_post_process.max_val"
        assert torch.equal(trained["model." + observer], calibrated[observer]), observer
    with pytest.raises(ConfigError, match="'fixed', 'update', 'learn'"):
        QuantPlan(activation_scales="learned")
    with pytest.raises(ConfigError, match="'track', 'learn'"):
        QuantPlan(weight_scales="fixed")
