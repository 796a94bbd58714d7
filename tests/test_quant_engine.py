"""qat.quant: presets, observers, fusion, QAT state, convert, warnings and the torch.ao boundary."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.quant import (
    ACTIVATION_OBSERVERS,
    calibrate,
    collect_patterns,
    compare_outputs,
    convert,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    fold_bn,
    freeze_activation_observers,
    freeze_bn_stats,
    fuse_model,
    get_qconfig,
    prepare_calibration,
    prepare_qat,
    replay_ops,
    start_qat,
    unconverted_layers,
    verify_model,
)
from qat.quant.backend import FakeQuantizeBase, FixedQParamsFakeQuantize, MinMaxObserver, nniqat, nnq, nnqat
from qat.quant.convbn import CONV_BN_QAT
from qat.quant.observers import MSEObserver, PercentileObserver

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_presets_document_their_grids() -> None:
    x86, arm, npu = get_qconfig("x86"), get_qconfig("arm"), get_qconfig("npu")
    assert (x86.weight_quant_max, x86.engine, x86.symmetric_activations) == (63, "x86", False)
    assert (arm.weight_quant_max, arm.engine) == (127, "qnnpack")
    assert npu.symmetric_activations
    w = x86.weight()()
    assert (w.quant_min, w.quant_max, w.qscheme) == (-63, 63, torch.per_channel_symmetric)
    with pytest.raises(ValueError, match="unknown quantization target 'tpu'"):
        get_qconfig("tpu")
    with pytest.raises(ValueError, match="unknown activation observer 'entropy'"):
        get_qconfig("x86", activation_observer="entropy")


def test_npu_activations_are_symmetric(user_net: nn.Module, x: Tensor) -> None:
    model = calibrate(prepare_calibration(user_net, "npu", activation_observer="minmax"), [x])
    q = convert(model)
    assert int(q.stem[0].zero_point) == 128


def _saturating_conv() -> nn.Module:
    """Full-range u8 activations into large same-sign weights: overflows int16 pairs on AVX2 with 8-bit weights."""
    m = nn.Sequential(qnn.QuantStub(scale=4 / 255, zero_point=0), qnn.ConvModule2d(64, 64, 3, padding=1, bias=False))
    m.append(qnn.DeQuantStub())
    with torch.no_grad():
        w = m[1].conv.weight
        w.copy_(w.abs() * (torch.rand(64, 1, 1, 1) > 0.5) * 2 - 0.5)
    return m


def test_x86_preset_never_saturates_and_matches_fake_quant() -> None:
    """torch's stock x86 qconfig trains on 7-bit activations and ships 8-bit ones; ours is one grid."""
    x = torch.rand(2, 64, 8, 8) * 4
    fq = prepare_qat(_saturating_conv(), "x86")
    fq(x)
    disable_observer(fq.eval())
    q = convert(fq)
    assert (fq(x) - q(x)).abs().max() <= 1e-5, "int8 must equal fake-quant exactly on x86"


@pytest.mark.parametrize("observer", ACTIVATION_OBSERVERS)
def test_every_activation_observer_calibrates(observer: str, user_net: nn.Module, x: Tensor) -> None:
    model = prepare_calibration(user_net, "x86", activation_observer=observer)
    calibrate(model, [x, x * 0.9], num_batches=2)
    disable_observer(model)
    q = convert(model)
    assert compare_outputs(user_net.eval(), q, [x])["rel_l2"] < 0.2  # PTQ of an untrained net vs float


def test_percentile_clips_outliers_and_mse_clips_heavy_tails() -> None:
    data = torch.randn(100_000)
    data[0] = 1000.0
    pct = PercentileObserver(percentile=99.9)
    pct(data)
    assert float(pct.calculate_qparams()[0]) < 10 / 255
    tails = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))
    mse, minmax = MSEObserver(), MinMaxObserver()
    mse(tails)
    minmax(tails)
    assert float(mse.calculate_qparams()[0]) < 0.95 * float(minmax.calculate_qparams()[0])  # measured 0.89


def test_calibrate_needs_batches(user_net: nn.Module) -> None:
    with pytest.raises(ValueError, match="no batches"):
        calibrate(prepare_calibration(user_net), [])


def test_fusion_is_found_without_a_list(user_net: nn.Module, x: Tensor) -> None:
    patterns = collect_patterns(user_net)
    assert ["stem.0", "stem.1", "stem.2"] in patterns  # plain Sequential
    assert ["pw.conv", "pw.norm", "layer_scale"] in patterns  # declared by the model
    assert ["dw.conv", "dw.norm"] in patterns  # declared by ConvModule2d (GELU is not fusable)
    user_net.eval()
    before = user_net(x)
    fuse_model(user_net)
    torch.testing.assert_close(user_net(x), before, rtol=1e-4, atol=1e-5)
    assert isinstance(user_net.layer_scale, nn.Identity)


def test_prepare_qat_swaps_and_state_controls(user_net: nn.Module, x: Tensor) -> None:
    fq = prepare_qat(user_net)
    assert user_net.stem[0].__class__ is nn.Conv2d, "prepare_qat copies by default"
    assert isinstance(fq.stem[0], nniqat.ConvBnReLU2d)
    fq(x)
    freeze_activation_observers(fq)
    for name, m in fq.named_modules():
        if isinstance(m, FakeQuantizeBase):
            assert bool(m.observer_enabled) == name.endswith("weight_fake_quant"), name
    freeze_bn_stats(fq)
    assert all(m.freeze_bn for m in fq.modules() if isinstance(m, nniqat.ConvBn2d | nniqat.ConvBnReLU2d))
    disable_fake_quant(fq)
    fixed = [m for m in fq.modules() if isinstance(m, FixedQParamsFakeQuantize)]
    assert fixed and all(bool(m.fake_quant_enabled) for m in fixed)


def test_calibration_continues_into_qat(user_net: nn.Module, x: Tensor) -> None:
    model = calibrate(prepare_calibration(user_net), [x])
    scale = float(model.dw.conv.activation_post_process.scale)
    start_qat(model, fixed_activation_scales=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(3):
        loss = model(x * 3).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(model.dw.conv.activation_post_process.scale) == scale, "fixed activation scales must not move"


def test_fold_bn_keeps_calibrated_outputs_and_grids(user_net: nn.Module, x: Tensor) -> None:
    user_net.train()(x)  # non-trivial BN running statistics
    model = calibrate(prepare_calibration(user_net), [x])
    weight_fq = model.dw.conv.weight_fake_quant
    out_fq = model.dw.conv.activation_post_process
    disable_observer(model)
    float_before = model(x)
    enable_fake_quant(model)
    fq_before = model(x)
    fold_bn(model)
    assert not any(isinstance(m, CONV_BN_QAT) for m in model.modules())
    assert type(model.stem[0]) is nniqat.ConvReLU2d and type(model.dw.conv) is nnqat.Conv2d
    assert model.dw.conv.weight_fake_quant is weight_fq and model.dw.conv.activation_post_process is out_fq
    fq_after = model.eval()(x)
    disable_fake_quant(model)
    torch.testing.assert_close(model(x), float_before, rtol=1e-4, atol=1e-5)
    assert float((fq_after - fq_before).detach().norm() / fq_before.detach().norm()) < 1e-2  # rounding near-ties only


def test_folded_qat_trains_and_converts_to_matching_int8(user_net: nn.Module, x: Tensor) -> None:
    model = start_qat(calibrate(prepare_calibration(user_net), [x]), bn="fold")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.stem[0].bias.detach().clone()
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x), torch.arange(len(x)) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model.stem[0].bias, before), "the folded bias trains"
    q = convert(disable_observer(model.eval()))
    assert unconverted_layers(q) == []
    assert compare_outputs(model, q, [x])["rel_l2"] < 0.05


def test_start_qat_rejects_unknown_bn_mode(user_net: nn.Module, x: Tensor) -> None:
    with pytest.raises(ValueError, match="fold"):
        start_qat(calibrate(prepare_calibration(user_net), [x]), bn="freeze")


def test_convert_requires_prepared_and_observed_model(user_net: nn.Module) -> None:
    with pytest.raises(ValueError, match="prepare_qat"):
        convert(user_net)
    with pytest.raises(ValueError, match=r"never saw data .*run calibrate\(model, batches\)"):
        convert(prepare_calibration(user_net))


@pytest.mark.parametrize("target", ["x86", "arm"])
def test_convert_leaves_the_global_engine_as_it_found_it(target: str, user_net: nn.Module, x: Tensor) -> None:
    """convert() packs under the target's engine and the int8 model runs under it, but the caller's
    ``torch.backends.quantized.engine`` is the same before and after both."""
    engine = get_qconfig(target).engine
    other = next(e for e in ("qnnpack", "x86") if e != engine)
    if not {engine, other} <= set(torch.backends.quantized.supported_engines):
        pytest.skip("this torch build lacks the x86 or qnnpack engine")
    saved = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = other
        q = convert(calibrate(prepare_calibration(user_net, target), [x]))
        assert torch.backends.quantized.engine == other
        seen = []
        q.stem.register_forward_hook(lambda *_: seen.append(torch.backends.quantized.engine))
        with torch.no_grad():
            y = q(x)
        assert seen == [engine] and torch.backends.quantized.engine == other
        torch.backends.quantized.engine = engine
        with torch.no_grad():
            assert torch.equal(q(x), y)
    finally:
        torch.backends.quantized.engine = saved


def test_high_precision_output_keeps_classifier_float(user_net: nn.Module, x: Tensor) -> None:
    fq = prepare_qat(user_net, high_precision_output=True)
    fq(x)
    q = convert(disable_observer(fq.eval()))
    fc = q.fc[1]
    assert type(fc) is nn.Linear and isinstance(q.fc[0], nnq.DeQuantize)
    assert unconverted_layers(q) == ["fc.1"]
    assert compare_outputs(fq, q, [x])["rel_l2"] < 0.02


def test_no_torch_ao_import_outside_qat_quant() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "qat").rglob("*.py")
        if "torch.ao" in p.read_text() and p.parent.name != "quant"
    ]
    assert offenders == []


def test_deprecation_warnings_filtered_narrowly() -> None:
    """torch.ao's notices are silenced by exact message; a user's own DeprecationWarning still fires."""
    code = (
        "import warnings, torch\n"
        "import qat.nn as qnn\n"
        "from qat.quant import prepare_qat, convert\n"
        "m = torch.nn.Sequential(qnn.QuantStub(), qnn.ConvModule2d(3, 4, 3, norm_layer='bn'), qnn.DeQuantStub())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    fq = prepare_qat(m); fq(torch.rand(2, 3, 8, 8)); q = convert(fq.eval()); q(torch.rand(2, 3, 8, 8))\n"
        "    warnings.warn('users keep theirs', DeprecationWarning)\n"
        "print([str(w.message)[:40] for w in caught])\n"
    )
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['users keep theirs']", out.stdout + out.stderr


def _calibrated_int8(make: type[nn.Module], shape: tuple[int, ...]) -> tuple[Tensor, nn.Module, nn.Module]:
    """A seeded net and input, the net calibrated on it (x86, observers then off) and its int8 conversion."""
    torch.manual_seed(0)
    net = make()
    x = torch.randn(shape)
    model = prepare_calibration(net, "x86")
    calibrate(model, [x])
    disable_observer(model.eval())
    return x, model, convert(model)


def test_convert_squares_depthwise_kernels_bit_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """(1, 5)/(5, 1) depthwise kernels become zero-padded (5, 5) ones (fbgemm's fast path), same outputs."""

    class AltDW(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = qnn.QuantStub()
            self.wide = qnn.ConvModule2d(8, 8, (1, 5), padding=(0, 2), groups=8, norm_layer="bn")
            self.tall = qnn.ConvModule2d(8, 8, (5, 1), 2, (2, 0), groups=8, norm_layer="bn", act_layer="relu")
            self.dequant = qnn.DeQuantStub()

        def forward(self, x: Tensor) -> Tensor:
            return self.dequant(self.tall(self.wide(self.quant(x))))

    x, model, int8 = _calibrated_int8(AltDW, (2, 8, 17, 19))
    for conv in (int8.wide.conv, int8.tall.conv):
        assert conv.kernel_size == (5, 5) and conv.padding == (2, 2)
    monkeypatch.setattr("qat.quant.fast_int8._square_depthwise_kernels", lambda m: None)
    as_trained = convert(model)
    assert as_trained.wide.conv.kernel_size == (1, 5) and as_trained.tall.conv.kernel_size == (5, 1)
    with torch.no_grad():
        assert torch.equal(int8(x), as_trained(x))


@pytest.mark.parametrize("seed", range(4))
def test_fast_per_tensor_fake_quant_equals_torch(seed: int) -> None:
    """Same values (ties included) and the same straight-through gradient as torch's kernel."""
    from qat.quant.fakequant import fake_quantize_per_tensor

    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(1, generator=g) * 0.1 + 1e-3
    zero_point = torch.randint(0, 256, (1,), generator=g, dtype=torch.int32)
    x = torch.randn(4, 8, 16, 16, generator=g) * 40 * scale
    x[0, 0, 0, :8] = (torch.arange(8) - 4 + 0.5) * scale  # exact half-way points
    x.requires_grad_(True)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, 0, 255)
    ours = fake_quantize_per_tensor(x, scale, zero_point, 0, 255)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(x)
    (g_ref,) = torch.autograd.grad(ref, x, grad)
    (g_ours,) = torch.autograd.grad(ours, x, grad)
    assert torch.equal(g_ours, g_ref)


@pytest.mark.parametrize("seed", range(4))
def test_fast_per_channel_fake_quant_equals_torch(seed: int) -> None:
    """Per-channel weights (7-bit and 8-bit grids): torch's values, ties and gradient exactly."""
    from qat.quant.fakequant import fake_quantize_per_channel

    g = torch.Generator().manual_seed(seed)
    qmin, qmax = (-64, 63) if seed % 2 else (-128, 127)
    w = torch.randn(16, 8, 3, 3, generator=g) * (torch.rand(16, 1, 1, 1, generator=g) + 0.1)
    scale = w.abs().flatten(1).amax(1) / ((qmax - qmin) / 2)
    zero_point = torch.zeros(16, dtype=torch.int32)
    w[:, 0, 0, 0] = scale * (torch.arange(16) % 7 - 3 + 0.5)  # exact half-way points
    w[0, 1, 0, 0] = scale[0] * qmax + scale[0] / 2  # rounds out of the grid: clamped, no gradient
    w.requires_grad_(True)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zero_point, 0, qmin, qmax)
    ours = fake_quantize_per_channel(w, scale, zero_point, 0, qmin, qmax)
    assert torch.equal(ours, ref)
    grad = torch.randn_like(w)
    (g_ref,) = torch.autograd.grad(ref, w, grad)
    (g_ours,) = torch.autograd.grad(ours, w, grad)
    assert torch.equal(g_ours, g_ref)
    assert g_ours[0, 1, 0, 0] == 0


def test_qat_uses_fast_fake_quant_for_weights_and_activations() -> None:
    """The presets' weight and activation fake-quants take the fast path (same torch.ao state)."""
    from qat.quant.fakequant import FastFakeQuantize

    qconfig = get_qconfig("x86")
    assert isinstance(qconfig.weight()(), FastFakeQuantize) and isinstance(qconfig.activation()(), FastFakeQuantize)


@pytest.mark.parametrize("ch_axis", [0, 1])
def test_weight_observer_tracks_current_per_channel_range(ch_axis: int) -> None:
    """Per-channel min/max of the latest weights (no stale extremes), qparams as torch computes them."""
    from qat.quant.backend import MovingAveragePerChannelMinMaxObserver
    from qat.quant.observers import CurrentPerChannelMinMaxObserver

    kwargs = {"ch_axis": ch_axis, "dtype": torch.qint8, "qscheme": torch.per_channel_symmetric}
    ours, ref = CurrentPerChannelMinMaxObserver(**kwargs), MovingAveragePerChannelMinMaxObserver(**kwargs)
    w = torch.randn(6, 5, 3, 3)
    ours(w), ref(w)
    for a, b in zip(ours.calculate_qparams(), ref.calculate_qparams(), strict=True):
        assert torch.equal(a, b)
    ours(w * 0.5)
    dims = [d for d in range(4) if d != ch_axis]
    assert torch.equal(ours.max_val, (w * 0.5).amax(dim=dims)) and torch.equal(ours.min_val, (w * 0.5).amin(dim=dims))


def test_verify_model_observes_eval_mode_ranges() -> None:
    """The observing pass runs in eval mode, as calibration does: BN's running statistics, not the batch's."""
    torch.manual_seed(0)
    model = nn.Sequential(qnn.QuantStub(), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), qnn.DeQuantStub())
    with torch.no_grad():
        model[2].running_var.fill_(1e4)  # eval mode divides by 100: outputs ~100x smaller than in train mode
    x = torch.rand(4, 3, 8, 8)
    r = verify_model(model, x, steps=0, bn="fold")
    with torch.no_grad():
        eval_out = model.eval()(x)
    step = next(m for m in r.int8_model.modules() if isinstance(m, nnq.Conv2d)).scale
    span = float(eval_out.max() - eval_out.min())
    assert span / step > 100, (span, step)  # the grid fits eval outputs; a train-mode grid would give ~2 steps


def test_wide_depthwise_convs_split_onto_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Depthwise int8 convs of over 100 channels not divisible by 8 (ShuffleNetV2 x1.0's 116) run as a
    112 + 4 split with the same output codes; narrower or divisible ones are left alone."""
    from qat.quant.fast_int8 import SplitDepthwiseConv2d

    class Wide(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = qnn.QuantStub()
            self.dw = qnn.ConvModule2d(116, 116, 3, 1, 1, groups=116, norm_layer="bn", act_layer="relu")
            self.dw_even = qnn.ConvModule2d(116, 116, 3, 2, 1, groups=116, bias=True)
            self.narrow = qnn.ConvModule2d(116, 58, 1)
            self.dw_narrow = qnn.ConvModule2d(58, 58, 3, 1, 1, groups=58)
            self.dequant = qnn.DeQuantStub()

        def forward(self, x: Tensor) -> Tensor:
            return self.dequant(self.dw_narrow(self.narrow(self.dw_even(self.dw(self.quant(x))))))

    x, model, int8 = _calibrated_int8(Wide, (2, 116, 12, 12))
    assert isinstance(int8.dw.conv, SplitDepthwiseConv2d) and int8.dw.conv.split == 112
    assert isinstance(int8.dw_even.conv, SplitDepthwiseConv2d)
    assert not isinstance(int8.dw_narrow.conv, SplitDepthwiseConv2d)
    monkeypatch.setattr("qat.quant.fast_int8._split_depthwise_channels", lambda m: None)
    unsplit = convert(model)
    with torch.no_grad():
        assert torch.equal(int8(x), unsplit(x))
    enable_fake_quant(model)
    # Compared as one op against fake-quant (its halves have no counterpart there: comparing them
    # separately would raise on the missing submodule).
    ops = replay_ops(model, int8, x)  # equal up to float32 near-ties, as every int8 op
    assert ops["compared"] > x.numel() and ops["mismatched"] <= 1e-4 * ops["compared"] and ops["worst_steps"] <= 1.001


def test_int8_elementwise_ops_align_memory_formats() -> None:
    """After convert, qat.nn.Add/Mul run as FastQFunctional: a channels-last and an NCHW operand give the
    codes of two NCHW ones (torch's kernel walks a 30x slower strided loop for the mixed pair), and a
    broadcast mul gives fake-quant's codes."""
    from qat.quant.fast_int8 import FastQFunctional

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.quant = qnn.QuantStub()
            self.conv = qnn.ConvModule2d(8, 8, 3, padding=1)
            self.add, self.mul = qnn.Add(), qnn.Mul()
            self.dequant = qnn.DeQuantStub()

        def forward(self, x: Tensor) -> Tensor:
            q = self.quant(x)
            y = self.conv(q)  # channels-last out of fbgemm, q is NCHW
            return self.dequant(self.mul(self.add(y, q), q))

    x, model, int8 = _calibrated_int8(Residual, (2, 8, 10, 10))
    assert isinstance(int8.add.op, FastQFunctional) and isinstance(int8.mul.op, FastQFunctional)
    qa = torch.quantize_per_tensor(torch.randn(2, 8, 10, 10), 0.05, 120, torch.quint8)
    qb = torch.quantize_per_tensor(torch.randn(2, 8, 10, 10), 0.04, 130, torch.quint8)
    cl = qa.contiguous(memory_format=torch.channels_last)
    for op in (int8.add.op.add, int8.add.op.add_relu, int8.mul.op.mul):
        assert torch.equal(op(cl, qb).int_repr().contiguous(), op(qa, qb).int_repr())
    assert int8.add.op.add(cl, qb).is_contiguous(memory_format=torch.channels_last)
    gate = torch.quantize_per_tensor(torch.rand(2, 8, 1, 1), 1 / 256, 0, torch.quint8)
    op = int8.mul.op
    expected = torch.fake_quantize_per_tensor_affine(
        qa.dequantize() * gate.dequantize(), op.scale, op.zero_point, 0, 255
    )
    assert torch.equal(op.mul(cl, gate).dequantize(), expected)  # a broadcast gate: fake-quant's arithmetic
    enable_fake_quant(model)
    ops = replay_ops(model, int8, x)
    assert ops["mismatched"] <= 1e-4 * ops["compared"] and ops["worst_steps"] <= 1.001
