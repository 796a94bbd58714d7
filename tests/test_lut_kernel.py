"""qat::lut_u8, the byte-table kernel of int8 activations, and its fallbacks."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from qat.quant import lut_kernel, portable_int8
from qat.quant.int8_ops import QuantizedLUT
from qat.quant.lut_kernel import lut_kernel_available, lut_u8, use_lut_kernel

needs_kernel = pytest.mark.skipif(not lut_kernel_available(), reason="qat::lut_u8 could not be built here")


def _gather(x: Tensor, table: Tensor) -> Tensor:
    raw = x.int_repr().view(torch.uint8) if x.dtype == torch.qint8 else x.int_repr()
    return table[raw.long()]


@needs_kernel
@pytest.mark.parametrize("simd", [True, False])
@pytest.mark.parametrize(
    "shape, fmt",
    [
        ((1, 128, 56, 56), torch.channels_last),
        ((2, 3, 7, 9), torch.contiguous_format),  # 378 elements: a masked tail after 5 full vectors
        ((63,), torch.contiguous_format),  # shorter than one vector
        ((1,), torch.contiguous_format),
    ],
)
@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
def test_kernel_equals_table_gather(shape, fmt, dtype, simd: bool) -> None:
    g = torch.Generator().manual_seed(len(shape) + int(simd))
    x = torch.quantize_per_tensor(torch.randn(shape, generator=g) * 2, 0.03, 0 if dtype == torch.qint8 else 128, dtype)
    if len(shape) == 4:
        x = x.contiguous(memory_format=fmt)
    table = torch.randint(0, 256, (256,), dtype=torch.uint8, generator=g)
    y = lut_u8(x, table, 0.05, 7, simd=simd)
    assert y.dtype == torch.quint8 and (y.q_scale(), y.q_zero_point()) == (0.05, 7)
    assert torch.equal(y.int_repr(), _gather(x, table))
    if len(shape) == 4:
        assert y.is_contiguous(memory_format=fmt), "the output keeps the input's memory format"


@needs_kernel
def test_kernel_on_a_strided_view_and_bad_inputs() -> None:
    x = torch.quantize_per_tensor(torch.randn(1, 8, 10, 10), 0.05, 100, torch.quint8)[:, :, ::2, 1:]
    table = torch.arange(256, dtype=torch.uint8).flip(0)
    assert torch.equal(lut_u8(x, table, 1.0, 0).int_repr(), _gather(x, table))
    with pytest.raises(RuntimeError, match="expects a contiguous CPU uint8 table of 256 entries"):
        lut_u8(x, table[:255], 1.0, 0)
    w = torch.quantize_per_channel(torch.randn(4, 3), torch.ones(4), torch.zeros(4, dtype=torch.long), 0, torch.qint8)
    with pytest.raises(RuntimeError, match="per-tensor quantized tensor"):
        lut_u8(w, table, 1.0, 0)


@needs_kernel
@pytest.mark.parametrize("fn", [nn.GELU(), nn.Hardswish(), nn.SiLU(), nn.Sigmoid()])
@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
def test_quantized_lut_kernel_path_equals_float_path(fn: nn.Module, dtype: torch.dtype) -> None:
    """Every code of the input grid, on both paths: the same output codes."""
    lo = 0 if dtype == torch.quint8 else -128
    codes = torch.arange(lo, lo + 256, dtype=torch.int16)
    raw = codes.to(torch.uint8 if dtype == torch.quint8 else torch.int8).reshape(1, 4, 8, 8)
    x = torch._make_per_tensor_quantized_tensor(raw, 0.04, 3 if dtype == torch.qint8 else 131)
    lut = QuantizedLUT(fn, 0.02, 20)
    fast = lut(x)
    with portable_int8():
        slow = lut(x)
    assert torch.equal(fast.int_repr(), slow.int_repr())
    assert torch.equal(fast.int_repr().flatten(), lut.table(x)), "the table is indexed by code"


def test_per_channel_prelu_takes_the_float_path() -> None:
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    lut = QuantizedLUT(prelu, 0.02, 128)
    assert not lut.elementwise and QuantizedLUT(nn.PReLU(), 0.02, 128).elementwise
    x = torch.quantize_per_tensor(torch.randn(2, 4, 3, 3), 0.05, 128, torch.quint8)
    expected = torch.quantize_per_tensor(prelu(x.dequantize()), 0.02, 128, torch.quint8)
    assert torch.equal(lut(x).int_repr(), expected.int_repr())


@needs_kernel
@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_portable_trace_has_no_qat_ops() -> None:
    """A TorchScript file traced under portable_int8() loads with plain torch; one traced
    outside it calls the kernel where the CPU has it."""
    x = torch.quantize_per_tensor(torch.randn(1, 4, 8, 8), 0.05, 128, torch.quint8)
    lut = QuantizedLUT(nn.GELU(), 0.02, 20)
    with portable_int8():
        portable = torch.jit.trace(lut, x, check_trace=False)
    assert "qat::lut_u8" not in str(portable.graph)
    fast = torch.jit.trace(lut, x, check_trace=False)
    assert ("qat::lut_u8" in str(fast.graph)) == use_lut_kernel()
    assert torch.equal(portable(x).int_repr(), fast(x).int_repr())


def test_env_switch_and_failed_build_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv("QAT_LUT_KERNEL", "0")
        lut_kernel.lut_kernel_available.cache_clear()
        lut_kernel._fast_cpu.cache_clear()
        lut_kernel._gate_cpu.cache_clear()
        assert not lut_kernel_available() and not use_lut_kernel() and not lut_kernel.use_channel_gate_kernel()
        with pytest.raises(RuntimeError, match="QAT_LUT_KERNEL"):
            lut_u8(
                torch.quantize_per_tensor(torch.zeros(3), 1.0, 0, torch.quint8),
                torch.zeros(256, dtype=torch.uint8),
                1,
                0,
            )
        monkeypatch.setenv("QAT_LUT_KERNEL", "1")
        monkeypatch.setattr(lut_kernel, "_SOURCES", [Path("/nonexistent/lut_u8.cpp")])
        monkeypatch.setattr(lut_kernel, "unsupported_platform", lambda: None)  # a supported CPU, a failing build
        lut_kernel.lut_kernel_available.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not lut_kernel_available()
        assert any(
            "could not be built" in str(w.message) and "run as stock torch ops" in str(w.message) for w in caught
        )
        x = torch.quantize_per_tensor(torch.randn(5), 0.05, 128, torch.quint8)
        lut = QuantizedLUT(nn.GELU(), 0.02, 20)
        assert torch.equal(lut(x).int_repr(), lut.table(x)[x.int_repr().long()])
    finally:
        monkeypatch.undo()
        lut_kernel.lut_kernel_available.cache_clear()
        lut_kernel._fast_cpu.cache_clear()
        lut_kernel._gate_cpu.cache_clear()


@pytest.mark.parametrize(
    ("machine", "flags", "reason"),
    [
        ("aarch64", "fp asimd", "written for x86-64 CPUs and this machine is aarch64"),
        ("x86_64", "fpu sse avx2", "neither AVX-512 VBMI nor AVX-512 VNNI"),
    ],
)
def test_other_platforms_skip_the_build_with_one_right_line(
    machine: str, flags: str, reason: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Not x86-64, or no AVX-512 VBMI/VNNI: no compiler is run and the one warning says why, not "install gcc"."""
    import platform

    import torch.utils.cpp_extension

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    try:
        monkeypatch.setattr(platform, "machine", lambda: machine)
        read_flags = lut_kernel._cpu_flags
        monkeypatch.setattr(lut_kernel, "_cpu_flags", lambda: read_flags(cpuinfo))
        monkeypatch.setattr(torch.utils.cpp_extension, "load", lambda *a, **k: pytest.fail("compiled anyway"))
        lut_kernel.lut_kernel_available.cache_clear()
        lut_kernel._fast_cpu.cache_clear()
        lut_kernel._gate_cpu.cache_clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not lut_kernel_available() and not use_lut_kernel() and not lut_kernel.use_channel_gate_kernel()
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "\n" not in messages[0], messages
        assert reason in messages[0] and "gcc" not in messages[0] and "stock torch ops" in messages[0]
    finally:
        monkeypatch.undo()
        lut_kernel.lut_kernel_available.cache_clear()
        lut_kernel._fast_cpu.cache_clear()
        lut_kernel._gate_cpu.cache_clear()
