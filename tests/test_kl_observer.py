"""KL-divergence (TensorRT entropy) calibration: the search, the histogram, and calibrate -> int8."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from contract import OP_MISMATCH_FRACTION
from torch import Tensor, nn

from qat.quant import (
    calibrate,
    compare_outputs,
    convert,
    disable_observer,
    enable_fake_quant,
    prepare_calibration,
    replay_ops,
)
from qat.quant.backend import MinMaxObserver
from qat.quant.observers import KLObserver, PercentileObserver, kl_divergences


def _direct_kl(hist: Tensor, i: int, levels: int) -> float:
    """TensorRT's definition for one candidate, bin by bin (the reference for the vectorised search)."""
    h = hist.double()
    p = h[:i].clone()
    p[i - 1] += h[i:].sum()
    group = torch.arange(i) * levels // i
    q = torch.zeros(i, dtype=torch.float64)
    for level in range(levels):
        members = (group == level) & (h[:i] > 0)
        if members.any():
            q[members] = h[:i][members].sum() / members.sum()
    p, q = p / p.sum(), q / q.sum()
    if ((p > 0) & (q == 0)).any():
        return float("inf")
    kept = p > 0
    return float((p[kept] * (p[kept] / q[kept]).log()).sum())


@pytest.mark.parametrize("levels", [128, 256])
def test_vectorised_search_equals_the_definition(levels: int) -> None:
    values = torch.randn(50_000).abs()
    hist = torch.histc(values, 2048, 0, float(values.max()))
    hist[1500:1600] = 0  # an empty run: clipping inside it puts clipped mass where Q has none
    candidates, kl = kl_divergences(hist, levels)
    assert candidates[0] == 128 and candidates[-1] == 2048
    for i in (128, 129, 200, 255, 256, 700, 1499, 1550, 1601, 2048):
        expected = _direct_kl(hist, i, levels)
        got = float(kl[i - 128])
        if expected == float("inf"):
            assert got == float("inf"), i
        else:
            assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), i


def _gaussian_with_outliers() -> Tensor:
    data = torch.randn(200_000)
    data[:6] = torch.tensor([40.0, -35.0, 50.0, 60.0, -45.0, 55.0])
    return data


def test_kl_clips_far_outliers_well_inside_the_max() -> None:
    data = _gaussian_with_outliers()
    kl, minmax, pct = KLObserver(), MinMaxObserver(), PercentileObserver(percentile=99.99)
    for obs in (kl, minmax, pct):
        obs(data[:100_000])
        obs(data[100_000:])
    kl_scale = float(kl.calculate_qparams()[0])
    threshold = kl_scale * 255 / 2  # signed data on an affine 0..255 grid: [-T, T]
    assert 2.5 < threshold < 6.0, threshold  # N(0, 1) with outliers at 35..60
    assert kl_scale < 0.15 * float(minmax.calculate_qparams()[0]), "KL fell back to the min-max range"
    pct_scale = float(pct.calculate_qparams()[0])
    assert abs(kl_scale - pct_scale) > 0.03 * pct_scale, (kl_scale, pct_scale)


def test_kl_uses_the_whole_grid_for_non_negative_activations() -> None:
    relu = torch.relu(torch.randn(100_000))
    relu[:3] = 30.0
    obs = KLObserver()
    obs(relu)
    scale, zero_point = obs.calculate_qparams()
    assert int(zero_point) == 0
    assert 2.0 < float(scale) * 255 < 6.0, float(scale) * 255  # clipped far below 30
    assert float(obs.histogram.sum()) == float((relu > 0).sum()), "exact zeros stay out of the histogram"


def test_histogram_range_doubles_and_keeps_every_count() -> None:
    obs = KLObserver()
    first, second = torch.rand(10_000), torch.rand(10_000) * 3
    obs(first)
    assert float(obs.hist_max) == float(first.max())
    obs(second)
    assert float(obs.hist_max) == pytest.approx(4 * float(first.max()))
    assert float(obs.histogram.sum()) == 20_000
    direct = torch.histc(torch.cat([first, second]), 2048, 0, float(obs.hist_max)).double()
    assert float((obs.histogram - direct).abs().sum()) <= 4  # merged bins equal direct counting, up to edge ties
    obs.reset_min_max_vals()
    assert float(obs.histogram.sum()) == 0 and float(obs.hist_max) == 0


def test_kl_calibration_converts_to_matching_int8(user_net: nn.Module) -> None:
    batches = [torch.rand(8, 3, 16, 16) * 2 - 1 for _ in range(3)]
    batches[0][0, :, :2, :2] = 0.99  # saturated corners: a long tail in the first layers
    model = calibrate(prepare_calibration(user_net, "x86", activation_observer="kl"), batches)
    minmax = calibrate(prepare_calibration(user_net, "x86", activation_observer="minmax"), batches)
    kl_obs = [m for m in model.modules() if isinstance(m, KLObserver)]
    assert kl_obs
    clipped = [
        name
        for name, m in model.named_modules()
        if name.endswith("activation_post_process")
        and hasattr(m, "activation_post_process")
        and isinstance(m.activation_post_process, KLObserver)
        and float(m.calculate_qparams()[0]) < 0.99 * float(minmax.get_submodule(name).calculate_qparams()[0])
    ]
    assert clipped, "every KL grid equals min-max: the search never clipped"
    fq = enable_fake_quant(disable_observer(model))  # the calibrated model as it converts
    q = convert(fq)
    ops = replay_ops(fq, q, batches[1])
    assert ops["compared"] > 1000, ops
    assert ops["mismatched"] <= OP_MISMATCH_FRACTION * ops["compared"], ops
    assert ops["worst_steps"] <= 1.0 + 1e-3, ops
    assert compare_outputs(user_net.eval(), q, batches)["rel_l2"] < 0.3  # PTQ of an untrained net vs float


def test_pipeline_ptq_with_kl(tmp_path: Path) -> None:
    from test_pipeline import FAST, QUANT_FAST

    from qat.pipeline.config import compose_config
    from qat.pipeline.stages import run_pipeline

    report = run_pipeline(compose_config([*FAST, *QUANT_FAST, "quant=calib", "quant.calib_observer=kl"]), tmp_path)
    assert list(report["stages"]) == ["float", "calib", "int8"]
    assert report["int8_vs_fake_quant"]["reference"] == "calib"
    assert report["int8_vs_fake_quant"]["top1"] >= 0.9
