"""qat's fake-quant kernels vs torch's: per-tensor (activations) and per-channel (weights),
forward and forward + backward time.

    python bench/fake_quant.py --shape 64x128x8x8 --weight-shape 384x1152x1x1 --runs 50

Both produce identical outputs and gradients (tests/test_quant_engine.py); this measures the speed
that ``qat.quant.fakequant`` was written for. Median of ``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from qat.quant.fakequant import fake_quantize_per_channel, fake_quantize_per_tensor


def per_call_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e3


def compare(
    kernels: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, runs: int, rounds: int
) -> None:
    """Print torch vs qat forward and forward + backward times, median of interleaved rounds."""
    grad = torch.randn_like(x)
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "fwd+bwd": []} for k in kernels}
    for _ in range(rounds):
        for name, fq in kernels.items():
            times[name]["fwd"].append(per_call_ms(lambda fq=fq: fq(x), runs))
            times[name]["fwd+bwd"].append(per_call_ms(lambda fq=fq: torch.autograd.grad(fq(x), x, grad), runs))
    for part in ("fwd", "fwd+bwd"):
        t, q = (statistics.median(times[k][part]) for k in ("torch", "qat"))
        print(f"  {part:8s} torch {t:.3f} ms  qat {q:.3f} ms  speed-up {t / q:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="64x128x8x8", help="activation (per-tensor, u8)")
    p.add_argument("--weight-shape", default="384x1152x1x1", help="weight (per-channel on dim 0, 7-bit)")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    print(f"{torch.get_num_threads()} threads, median of {args.rounds} rounds")

    x = torch.randn(*(int(d) for d in args.shape.split("x")), requires_grad=True)
    scale, zero_point = torch.tensor([0.02]), torch.tensor([128], dtype=torch.int32)
    print(f"activation {args.shape}, per-tensor")
    compare(
        {
            "torch": lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zero_point, 0, 255),
            "qat": lambda t: fake_quantize_per_tensor(t, scale, zero_point, 0, 255),
        },
        x,
        args.runs,
        args.rounds,
    )

    w = torch.randn(*(int(d) for d in args.weight_shape.split("x")), requires_grad=True)
    w_scale = w.detach().abs().flatten(1).amax(1) / 63.5
    w_zero = torch.zeros(len(w_scale), dtype=torch.int32)
    print(f"weight {args.weight_shape}, per-channel")
    compare(
        {
            "torch": lambda t: torch.fake_quantize_per_channel_affine(t, w_scale, w_zero, 0, -64, 63),
            "qat": lambda t: fake_quantize_per_channel(t, w_scale, w_zero, 0, -64, 63),
        },
        w,
        args.runs,
        args.rounds,
    )


if __name__ == "__main__":
    main()
