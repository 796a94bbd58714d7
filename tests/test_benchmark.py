"""Latency measurement helpers (qat.pipeline.benchmark) and the bench/ scripts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from qat.nn.stubs import DeQuantStub, QuantStub
from qat.pipeline.benchmark import (
    channels_last,
    compare_latency,
    count_macs,
    cpu_description,
    fold_batchnorm,
    measure_latency,
    model_complexity,
    quantize_for_timing,
    torchscript,
)


def test_cpu_clock_needs_one_thread_and_counts_work() -> None:
    small, large = nn.Conv2d(3, 8, 3), nn.Conv2d(3, 64, 3)
    x = torch.rand(1, 3, 96, 96)
    with pytest.raises(ValueError, match="threads=1"):
        measure_latency(small, x, runs=2, warmup=0, threads=2, clock="cpu")
    with pytest.raises(ValueError, match="clock"):
        measure_latency(small, x, runs=2, warmup=0, clock="gpu")
    t = compare_latency({"small": small, "large": large}, x, runs=5, warmup=1, threads=1, rounds=2, clock="cpu")
    assert 0 < t["small"] < t["large"]


@pytest.mark.parametrize(("flags", "expected"), [("avx2 fma", "no VNNI"), ("avx2 avx512f avx512_vnni", "VNNI")])
def test_cpu_description_names_the_int8_instructions(tmp_path: Path, flags: str, expected: str) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu {flags}\n")
    text = cpu_description(info)
    assert text.endswith(f", {expected})") and torch.backends.cpu.get_cpu_capability() in text
    assert cpu_description(tmp_path / "missing").endswith("no VNNI)")


def test_macs_count_convs_and_linears_per_sample() -> None:
    """3x3 conv 3→8 on 10x10 (padding 1): 8·3·9·100 MACs; linear 8→5: 40; BN, ReLU and pooling: none."""
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    ).train()
    assert count_macs(model, torch.rand(1, 3, 10, 10)) == 8 * 3 * 9 * 100 + 40
    assert model.training
    info = model_complexity(model, torch.rand(4, 3, 10, 10))
    assert info == {"params": 8 * 27 + 8 + 16 + 40 + 5, "macs": 21_640, "input_shape": [1, 3, 10, 10]}


def test_fold_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    x = torch.rand(2, 3, 16, 16)
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.Identity)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


def test_channels_last_copy_keeps_outputs_and_the_original() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    x = torch.rand(2, 3, 16, 16)
    fast = channels_last(model)
    assert fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model[0].weight.is_contiguous()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_torchscript_forms_compute_what_the_eager_models_do() -> None:
    """The deployed forms the latency bench times: int8 codes equal, fp32 within float error."""
    torch.manual_seed(0)
    model = nn.Sequential(
        QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.GELU(), nn.Conv2d(8, 4, 1), nn.Hardswish(), DeQuantStub()
    ).eval()
    x = torch.rand(1, 3, 16, 16)
    int8 = quantize_for_timing(model, x)
    with torch.no_grad():
        assert torch.equal(torchscript(int8, x)(x), int8(x))
        for optimize in (False, True):
            torch.testing.assert_close(torchscript(model, x, optimize=optimize)(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("script", "args", "needle"),
    [
        (
            "fake_quant.py",
            ["--shape", "2x3x4x4", "--weight-shape", "4x3x1x1", "--runs", "1", "--rounds", "1"],
            "weight 4x3x1x1, per-channel",
        ),
        (
            "latency.py",
            ["--models", "tiny_convnet", "--shapes", "2x3x32x32", "--runs", "1", "--rounds", "1", "--channels-last"]
            + ["--torchscript"],
            "TorchScript: int8",
        ),
        (
            "step_time.py",
            ["--model", "tiny_convnet", "--batch", "4", "--steps", "1", "--rounds", "1"],
            "qat default (BN folded",
        ),
    ],
)
def test_bench_scripts_run(script: str, args: list[str], needle: str) -> None:
    """The bench/ scripts BENCHMARKS.md quotes still run (tiny sizes; the figures come from full runs)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, str(root / "bench" / script), *args], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert needle in out.stdout


def test_macs_of_a_model_that_views_its_parameters() -> None:
    """A forward that slices a parameter (a view that needs grad, made under no_grad) is still counted."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.gamma = nn.Parameter(torch.ones(1, 8, 1, 1))
            self.scale = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) * self.scale(self.gamma[:, :4])

    assert count_macs(Scaled(), torch.rand(1, 3, 5, 5)) == 4 * 3 * 25
