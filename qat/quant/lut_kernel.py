"""qat's int8 CPU kernels, compiled on first use: ``qat::lut_u8`` and ``qat::channel_gate_u8``.

An elementwise activation on int8 codes is a 256-entry table (see :mod:`qat.quant.int8_ops`).
PyTorch has no table-lookup kernel for quantized tensors, so ``csrc/lut_u8.cpp`` adds one: on
CPUs with AVX-512 VBMI it looks up 64 codes per two instructions. ``csrc/channel_gate_u8.cpp``
runs a whole squeeze-and-excitation gate (pool, two 1×1 convs, activation tables, multiply) as
one call where torch needs seven (:mod:`qat.quant.channel_gate`). Both are compiled once with
torch's ``cpp_extension`` (cached under ``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``) the first time ``convert`` builds an int8 activation or SE gate, on
x86-64 CPUs with AVX-512 VBMI or VNNI only (their sources use x86 intrinsics). Their speed-ups
and build time are in BENCHMARKS.md §3 ("Figures cited in the code").

Nothing depends on them: on other CPUs (one warning says why), without a compiler, with
``QAT_LUT_KERNEL=0``, or inside :func:`portable_int8`, the same layers run as stock torch ops.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
import shutil
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "lut_kernel_available",
    "lut_u8",
    "portable_int8",
    "unsupported_platform",
    "use_channel_gate_kernel",
    "use_lut_kernel",
]

_SOURCES = [Path(__file__).with_name("csrc") / f for f in ("lut_u8.cpp", "channel_gate_u8.cpp")]
_ENV = "QAT_LUT_KERNEL"
_X86_64 = ("x86_64", "amd64")
# lut_u8's 64-byte lookup needs AVX-512 VBMI, channel_gate_u8's int8 dot products AVX-512 VNNI
_CPU_FLAGS = ("avx512vbmi", "avx512_vnni")
_portable_depth = 0


def _cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux), or None where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def unsupported_platform() -> str | None:
    """Why the kernels cannot run here (not x86-64, or an x86-64 CPU without AVX-512 VBMI/VNNI), or None.

    The sources include ``<immintrin.h>``: compiling them anywhere else only fails. Where the CPU
    flags cannot be read (non-Linux x86-64) the build is tried and the kernels query the CPU.
    """
    machine = platform.machine()
    if machine.lower() not in _X86_64:
        return f"they are written for x86-64 CPUs and this machine is {machine or 'of unknown architecture'}"
    flags = _cpu_flags()
    if flags is not None and not flags.intersection(_CPU_FLAGS):
        return "this x86-64 CPU has neither AVX-512 VBMI nor AVX-512 VNNI, which they are written for"
    return None


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """torch's cpp_extension runs ``ninja``: use the ``ninja`` wheel's binary when none is on PATH."""
    if shutil.which("ninja") is not None:
        yield
        return
    path = os.environ.get("PATH", "")
    try:
        import ninja

        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    try:
        yield
    finally:
        os.environ["PATH"] = path


@functools.lru_cache(maxsize=1)
def lut_kernel_available() -> bool:
    """Build (first call only) and load qat's kernels; False, with one warning, if they cannot be."""
    if os.environ.get(_ENV, "1") == "0":
        return False
    reason = unsupported_platform()
    if reason is not None:
        warnings.warn(
            f"qat: the int8 kernels (qat/quant/csrc) are not used: {reason}; int8 activations and SE gates "
            f"run as stock torch ops (same codes). Set {_ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its "No CUDA runtime is found" notice: this op is CPU-only
    try:
        from torch.utils.cpp_extension import load

        with _ninja_on_path():
            load(
                name="qat_int8_kernels",
                sources=[str(p) for p in _SOURCES],
                # no fused multiply-adds: the kernels round where torch's op chains round;
                # OpenMP: at::parallel_for runs on torch's own threads (the libgomp torch loaded)
                extra_cflags=["-O3", "-ffp-contract=off", "-fopenmp"],
                extra_ldflags=["-fopenmp"],
                is_python_module=False,
            )
        return True
    except Exception as err:  # a missing compiler or ninja, an unwritable cache: fall back, say why
        warnings.warn(
            f"qat: the int8 kernels (qat/quant/csrc) could not be built ({type(err).__name__}: "
            f"{str(err).strip().splitlines()[-1] if str(err).strip() else 'no message'}); int8 activations "
            f"and SE gates run as stock torch ops instead (same codes, slower). Install gcc and ninja, or "
            f"set {_ENV}=0 to silence this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def portable_int8() -> Iterator[None]:
    """Inside this block int8 layers use stock torch ops only, e.g. to trace a TorchScript file
    that loads with plain torch (no ``qat`` op library needed)."""
    global _portable_depth
    _portable_depth += 1
    try:
        yield
    finally:
        _portable_depth -= 1


@functools.lru_cache(maxsize=1)
def _fast_cpu() -> bool:
    return lut_kernel_available() and bool(torch.ops.qat.lut_simd())


@functools.lru_cache(maxsize=1)
def _gate_cpu() -> bool:
    return lut_kernel_available() and bool(torch.ops.qat.channel_gate_simd())


def _usable(query: Callable[[], bool]) -> bool:
    """Not portable, and the CPU query already made: an op returning a bool cannot be traced,
    so a trace that starts before the first query takes the portable path."""
    if _portable_depth or (torch.jit.is_tracing() and query.cache_info().currsize == 0):  # type: ignore[attr-defined]
        return False
    return query()


def use_lut_kernel() -> bool:
    """Route int8 activations through ``qat::lut_u8``? Only where it is faster: a VBMI CPU."""
    return _usable(_fast_cpu)


def use_channel_gate_kernel() -> bool:
    """Run squeeze-and-excitation gates as ``qat::channel_gate_u8``? On AVX-512 VNNI CPUs."""
    return _usable(_gate_cpu)


def lut_u8(x: Tensor, table: Tensor, scale: float, zero_point: int, simd: bool = True) -> Tensor:
    """``table[raw byte of x]`` as a quint8 tensor on ``(scale, zero_point)``, in ``x``'s memory format.

    ``simd=False`` forces the scalar loop (tests compare both).
    """
    if not lut_kernel_available():
        raise RuntimeError(f"qat::lut_u8 is not available (see the earlier warning, or {_ENV})")
    return torch.ops.qat.lut_u8(x, table, float(scale), int(zero_point), simd)
