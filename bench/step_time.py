"""QAT step time vs float step time, measured in one run: torchvision's stock eager flow vs qat.

    python bench/step_time.py --model mobilenet_v2 --batch 128 --steps 12
    python bench/step_time.py --threads 1 --clock cpu   # CPU time: robust on a busy machine

torchvision's flow is the one the bar was measured with: QuantizableMobileNetV2,
``fuse_model(is_qat=True)``, ``get_default_qat_qconfig("x86")``, ``prepare_qat``. Ours: the
registry model through ``qat.quant.prepare_qat`` (x86 preset), calibrated, then QAT as the
pipeline runs it by default (BN folded into the convs, activation scales fixed from calibration)
and, for comparison, with BN tracked (torch.ao's conv+BN modules) and with updating scales. The stock flow
is a competitor baseline, so this script (not the library) calls torch.ao directly.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from qat.models import create_model
from qat.quant import calibrate, prepare_calibration, start_qat


def median_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int = 2, clock: str = "wall"
) -> float:
    """Median seconds of an SGD step (forward, backward, update) after ``warmup`` steps.

    ``clock="cpu"`` times the calling thread's CPU time (with one torch thread: all the work,
    none of the waiting for a busy core).
    """
    timer = time.thread_time if clock == "cpu" else time.perf_counter
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    times = []
    for i in range(steps + warmup):
        t0 = timer()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(timer() - t0)
    return statistics.median(times)


def torchvision_stock(num_classes: int) -> tuple[nn.Module, nn.Module]:
    import torch.ao.quantization as tq
    from torchvision.models.quantization import mobilenet_v2

    float_model = mobilenet_v2(weights=None, quantize=False, num_classes=num_classes)
    qat_model = copy.deepcopy(float_model).train()
    qat_model.fuse_model(is_qat=True)
    qat_model.qconfig = tq.get_default_qat_qconfig("x86")
    tq.prepare_qat(qat_model, inplace=True)
    return float_model, qat_model


def ours(name: str, num_classes: int, x: torch.Tensor, fixed: bool, bn: str) -> tuple[nn.Module, nn.Module]:
    float_model = create_model(name, num_classes=num_classes)
    qat_model = calibrate(prepare_calibration(float_model), [x])
    return float_model, start_qat(qat_model, fixed_activation_scales=fixed, bn=bn)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3, help="alternate float/QAT measurements this many times")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: thread CPU time (needs --threads 1)")
    args = p.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        p.error("--clock cpu measures one thread: add --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    y = torch.randint(0, 10, (args.batch,))
    flows: dict[str, Callable[[], tuple[nn.Module, nn.Module]]] = {
        "torchvision stock x86 QAT": lambda: torchvision_stock(10),
        "qat default (BN folded, fixed scales)": lambda: ours(args.model, 10, x, fixed=True, bn="fold"),
        "qat BN tracked, fixed scales": lambda: ours(args.model, 10, x, fixed=True, bn="track"),
        "qat BN tracked, updating scales": lambda: ours(args.model, 10, x, fixed=False, bn="track"),
    }
    results = {}
    for label, build in flows.items():
        float_model, qat_model = build()
        ratios, f_times, q_times = [], [], []
        for _ in range(args.rounds):  # interleave so machine noise hits both alike
            f = median_step(float_model, x, y, args.steps, clock=args.clock)
            q = median_step(qat_model, x, y, args.steps, clock=args.clock)
            f_times.append(f)
            q_times.append(q)
            ratios.append(q / f)
        results[label] = {
            "float_step_s": statistics.median(f_times),
            "qat_step_s": statistics.median(q_times),
            "ratio": statistics.median(ratios),
        }
        print(
            f"{label:38s} float {results[label]['float_step_s']:.3f}s  QAT {results[label]['qat_step_s']:.3f}s  "
            f"ratio {results[label]['ratio']:.2f}x",
            flush=True,
        )
    print(json.dumps({"args": vars(args), "threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
