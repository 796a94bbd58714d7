"""Size and latency of the fp32 and int8 models, measured the same way in the same process."""

from __future__ import annotations

import copy
import io
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qat.quant import calibrate, collect_patterns, convert, prepare_calibration
from qat.quant.fuse import replace_module

__all__ = [
    "channels_last",
    "compare_latency",
    "count_macs",
    "model_complexity",
    "cpu_description",
    "fold_batchnorm",
    "measure_latency",
    "quantize_for_timing",
    "state_dict_bytes",
    "torchscript",
]


def cpu_description(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU and the int8 instructions that bound int8 speed-ups, e.g. ``"AMD EPYC (AVX512, VNNI)"``.

    Without VNNI, fbgemm's int8 multiply-accumulate takes two instructions (``vpmaddubsw`` +
    ``vpmaddwd``) for four times the lanes of one fp32 FMA, so int8 tops out near 2x over fp32;
    VNNI's ``vpdpbusd`` does it in one (near 4x). Latency ratios are only comparable between
    machines that print the same line.
    """
    name, flags = platform.machine(), set()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    vnni = "VNNI" if flags & {"avx512_vnni", "avx_vnni", "amx_int8"} else "no VNNI"
    return f"{name} ({torch.backends.cpu.get_cpu_capability()}, {vnni})"


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a deployment would ship)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of a float model with every declared conv→BN pair folded into the conv.

    The fair fp32 baseline for latency: int8 models have BN folded too. Pairs come from the
    same fusion patterns ``qat.quant`` uses, so nothing is model-specific.
    """
    model = copy.deepcopy(model).eval()
    for pattern in collect_patterns(model):
        for conv_path, bn_path in zip(pattern, pattern[1:]):
            conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
            if type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d:
                replace_module(model, conv_path, fuse_conv_bn_eval(conv, bn))
                replace_module(model, bn_path, nn.Identity())
    return model


class _ChannelsLast(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def channels_last(model: nn.Module) -> nn.Module:
    """A copy of a float model that runs in channels-last memory format (input converted on entry).

    fp32 convs on CPU often run faster this way (oneDNN's native layout; fbgemm's int8 convs
    use it internally): timing both layouts keeps the fp32 baseline honest.
    """
    return _ChannelsLast(copy.deepcopy(model)).eval()


@torch.no_grad()
def torchscript(model: nn.Module, example: Tensor, optimize: bool = False) -> nn.Module:
    """``model`` traced on ``example`` and frozen: how a model ships without Python.

    At batch 1 an eager int8 model spends much of its time in Python between kernels
    (BENCHMARKS.md §3, "Figures cited in the code"), so deployed latency is TorchScript's.
    ``optimize`` adds ``torch.jit.optimize_for_inference`` (fp32: oneDNN weight layouts), often
    fp32's fastest form. int8 keeps qat's kernels (``qat::lut_u8``, ``qat::channel_gate_u8``)
    where the CPU runs them fast.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.(trace|trace_method|freeze|optimize_for_inference)` is deprecated"
        )
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(traced) if optimize else torch.jit.freeze(traced)


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    example: Tensor,
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = 1,
    clock: str = "wall",
) -> float:
    """Median seconds of ``model(example)`` over ``runs`` calls after ``warmup`` calls.

    ``threads`` pins torch's intra-op threads for the measurement (restored after; ``None``: leave
    as is). One thread is the default: batch-1 latency on a shared machine is otherwise dominated
    by threads waiting for each other. ``clock="cpu"`` (one thread only) counts the CPU time of
    the calling thread, which runs every kernel itself: time spent waiting for a busy machine's
    cores is left out, so figures from a shared machine stay comparable.
    """
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    if clock == "cpu" and threads != 1:
        raise ValueError("clock='cpu' measures one thread's CPU time: use threads=1")
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    model.eval()
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(max(1, runs)):
            start = timer()
            model(example)
            times.append(timer() - start)
    finally:
        torch.set_num_threads(previous)
    return statistics.median(times)


def compare_latency(
    models: dict[str, nn.Module],
    example: Tensor,
    runs: int = 30,
    warmup: int = 5,
    threads: int | None = 1,
    rounds: int = 3,
    clock: str = "wall",
) -> dict[str, float]:
    """Latency of several models measured in interleaved rounds; each gets its best round median.

    Interleaving spreads a busy spell on a shared machine over all models instead of one.
    """
    best: dict[str, float] = {}
    for _ in range(max(1, rounds)):
        for name, model in models.items():
            t = measure_latency(model, example, runs, warmup, threads, clock)
            best[name] = min(best.get(name, t), t)
    return best


def quantize_for_timing(model: nn.Module, example: Tensor, target: str = "x86") -> nn.Module:
    """A real int8 model of ``model`` calibrated on ``example`` alone: right layers and sizes for
    size and latency measurements, not for accuracy (that needs calibration on real data)."""
    return convert(calibrate(prepare_calibration(model, target), [example]))


def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one eval forward: convs, linears and matmuls (``torch.utils.flop_counter``'s
    FLOPs / 2; pooling, normalisation and activations are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    counter = FlopCounterMode(display=False)
    # not under no_grad: its module tracker fails on views made there of parameters (HENet's layer scales)
    with counter:
        model.eval()(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


def model_complexity(model: nn.Module, example: Tensor) -> dict[str, int | list[int]]:
    """Parameters and MACs per sample of ``model`` at ``example``'s input shape, as papers print them."""
    x = example[:1]
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "macs": count_macs(model, x),
        "input_shape": list(x.shape),
    }
