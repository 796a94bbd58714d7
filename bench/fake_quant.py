"""qat's per-tensor activation fake-quant vs torch's kernel: forward and forward + backward time.

    python bench/fake_quant.py --shape 64x128x8x8 --runs 50

Both produce identical outputs and gradients (tests/test_quant_engine.py); this measures the speed
that ``qat.quant.fakequant`` was written for. Median of ``--rounds`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from qat.quant.fakequant import fake_quantize_per_tensor


def per_call_ms(fn: Callable[[], object], runs: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="64x128x8x8")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    x = torch.randn(*(int(d) for d in args.shape.split("x")), requires_grad=True)
    grad = torch.randn_like(x)
    scale, zero_point = torch.tensor([0.02]), torch.tensor([128], dtype=torch.int32)
    kernels = {
        "torch": lambda t: torch.fake_quantize_per_tensor_affine(t, scale, zero_point, 0, 255),
        "qat": lambda t: fake_quantize_per_tensor(t, scale, zero_point, 0, 255),
    }
    times: dict[str, dict[str, list[float]]] = {k: {"fwd": [], "fwd+bwd": []} for k in kernels}
    for _ in range(args.rounds):
        for name, fq in kernels.items():
            times[name]["fwd"].append(per_call_ms(lambda fq=fq: fq(x), args.runs))
            times[name]["fwd+bwd"].append(per_call_ms(lambda fq=fq: torch.autograd.grad(fq(x), x, grad), args.runs))
    print(f"shape {args.shape}, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    for part in ("fwd", "fwd+bwd"):
        t, q = (statistics.median(times[k][part]) for k in ("torch", "qat"))
        print(f"{part:8s} torch {t:.3f} ms  qat {q:.3f} ms  speed-up {t / q:.2f}x")


if __name__ == "__main__":
    main()
