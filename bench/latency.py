"""fp32 (BN folded) vs int8 latency per model, measured side by side in one process.

    python bench/latency.py                      # henet_tinym, mobilenet_v2, mobilenet_v3_large
    python bench/latency.py --models resnet18 --threads 2 --runs 20
    python bench/latency.py --threads 1 --clock cpu   # CPU time: robust on a busy machine
    python bench/latency.py --channels-last           # also fp32 in channels-last (often faster)
    python bench/latency.py --channels-last --torchscript   # also the deployed (TorchScript) forms

For each model and input shape (default 1x3x224x224 and 32x3x32x32) the fp32 model with every
conv+BN folded (the fair baseline: int8 has BN folded too) and the int8 model are timed in
interleaved rounds; each reports the best round's median. The int8 model is calibrated on the
example input only: right layers and kernels, not meaningful accuracy. The first line printed
names the CPU and whether it has VNNI, which bounds int8 speed-ups (see BENCHMARKS.md).

``--torchscript`` also times both models traced and frozen (fp32 also through
``torch.jit.optimize_for_inference``) and reports int8's deployed speed-up: its TorchScript form
against the fastest of every fp32 form timed, with qat's kernels (``qat::lut_u8``: int8
activations as a byte lookup, on AVX-512 VBMI; ``qat::channel_gate_u8``: an SE gate in one call,
on AVX-512 VNNI) and without them (``portable``: stock torch ops, what the exported
``model_int8.ts`` contains).
"""

from __future__ import annotations

import argparse
import json

import torch

from qat.models import create_model
from qat.pipeline.benchmark import (
    channels_last,
    compare_latency,
    cpu_description,
    fold_batchnorm,
    quantize_for_timing,
    torchscript,
)
from qat.quant import portable_int8

DEFAULT_MODELS = ("henet_tinym", "mobilenet_v2", "mobilenet_v3_large")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    n, c, h, w = (int(v) for v in text.lower().split("x"))
    return n, c, h, w


def bench_model(name: str, shapes: list[tuple[int, int, int, int]], args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    rows = []
    for shape in shapes:
        x = torch.rand(*shape) * 2 - 1
        int8 = quantize_for_timing(model, x, args.target)
        models = {"fp32": fold_batchnorm(model), "int8": int8}
        if args.channels_last:
            models["fp32_cl"] = channels_last(models["fp32"])
        if args.torchscript:
            models.update(
                {f"{k}_ts": torchscript(m, x) for k, m in models.items()},
                fp32_ofi=torchscript(models["fp32"], x, optimize=True),
            )
            with portable_int8():  # what qat's exported model_int8.ts runs: stock torch ops only
                models["int8_portable_ts"] = torchscript(int8, x)
        t = compare_latency(models, x, args.runs, args.warmup, args.threads, args.rounds, args.clock)
        row = {
            "model": name,
            "shape": "x".join(map(str, shape)),
            "fp32_ms": 1e3 * t["fp32"],
            "int8_ms": 1e3 * t["int8"],
            "speedup": t["fp32"] / t["int8"],
        }
        line = f"{name:22s} {row['shape']:>12s}  fp32 {row['fp32_ms']:8.2f} ms  int8 {row['int8_ms']:8.2f} ms  {row['speedup']:.2f}x"
        if args.channels_last:
            row.update(fp32_cl_ms=1e3 * t["fp32_cl"], speedup_cl=t["fp32_cl"] / t["int8"])
            line += f"  | fp32 channels-last {row['fp32_cl_ms']:8.2f} ms  {row['speedup_cl']:.2f}x"
        if args.torchscript:
            fastest = min((k for k in t if k.startswith("fp32")), key=t.get)
            row.update({f"{k}_ms": 1e3 * v for k, v in t.items() if k.endswith(("_ts", "_ofi"))})
            row.update(fp32_fastest=fastest, speedup_deployed=t[fastest] / t["int8_ts"])
            line += (
                f"  | TorchScript: int8 {1e3 * t['int8_ts']:6.2f} ms vs fastest fp32 ({fastest}) "
                f"{1e3 * t[fastest]:6.2f} ms  {row['speedup_deployed']:.2f}x"
                f" (portable int8 {1e3 * t['int8_portable_ts']:6.2f} ms  {t[fastest] / t['int8_portable_ts']:.2f}x)"
            )
        rows.append(row)
        print(line, flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--shapes", nargs="+", default=[(1, 3, 224, 224), (32, 3, 32, 32)], type=parse_shape)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--target", default="x86")
    p.add_argument(
        "--channels-last", action="store_true", help="also time fp32 in channels-last layout (often its faster one)"
    )
    p.add_argument(
        "--torchscript", action="store_true", help="also time both models traced and frozen (how they deploy)"
    )
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: thread CPU time (needs --threads 1)")
    args = p.parse_args()
    print(f"# {cpu_description()}, {args.threads} thread(s), {args.clock} clock", flush=True)
    rows = [row for name in args.models for row in bench_model(name, args.shapes, args)]
    machine = {"cpu": cpu_description(), "threads": args.threads, "torch": torch.__version__}
    machine["clock"] = args.clock
    print(json.dumps({"machine": machine, "args": {**vars(args), "shapes": None}, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
