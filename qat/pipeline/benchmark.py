"""Size and latency of the fp32 and int8 models, measured the same way in the same process."""

from __future__ import annotations

import copy
import io
import statistics
import time

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from qat.quant import calibrate, collect_patterns, convert, prepare_calibration

__all__ = ["compare_latency", "fold_batchnorm", "measure_latency", "quantize_for_timing", "state_dict_bytes"]


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (what a deployment would ship)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _set(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


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
                _set(model, conv_path, fuse_conv_bn_eval(conv, bn))
                _set(model, bn_path, nn.Identity())
    return model


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
