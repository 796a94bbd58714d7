"""fp32 (BN folded) vs int8 latency per model, measured side by side in one process.

    python bench/latency.py                      # henet_tinym, mobilenet_v2, mobilenet_v3_large
    python bench/latency.py --models resnet18 --threads 2 --runs 20
    python bench/latency.py --threads 1 --clock cpu   # CPU time: robust on a busy machine
    python bench/latency.py --channels-last           # also fp32 in channels-last (often faster)
    python bench/latency.py --channels-last --torchscript   # also the deployed (TorchScript) forms
    python bench/latency.py --onnx                    # + ONNX Runtime fp32 and QDQ int8, side by side

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

``--onnx`` (implies ``--torchscript``) also exports the fp32 model (BN folded) and the calibrated
model as QDQ ONNX (``qat.export.to_onnx``) and times both in ONNX Runtime's CPU execution provider
(``--threads`` intra-op threads, all graph optimizations), plus the QDQ file as ONNX Runtime
optimized and saved it (``onnx_int8_saved``: the fused QLinearConv graph loaded with optimizations
off). It reports ONNX Runtime int8 against qat's int8 TorchScript and against the fastest fp32
form of either runtime.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

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
from qat.quant import calibrate, convert, disable_observer, enable_fake_quant, portable_int8, prepare_calibration

DEFAULT_MODELS = ("henet_tinym", "mobilenet_v2", "mobilenet_v3_large")


def parse_shape(text: str) -> tuple[int, int, int, int]:
    n, c, h, w = (int(v) for v in text.lower().split("x"))
    return n, c, h, w


@torch.no_grad()
def settle_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """BN statistics of ``x`` (one train-mode pass, momentum 1): a random-init net otherwise leaves whole
    layers at zero, whose degenerate int8 grids ONNX Runtime's integer pooling refuses."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 1.0
    model.train()(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def onnx_models(fp32: torch.nn.Module, fake_quant: torch.nn.Module, x: torch.Tensor, threads: int) -> dict:
    """fp32 and QDQ int8 ONNX of one model in ONNX Runtime sessions, called like torch models."""
    import onnxruntime as ort

    from qat.export import export_float_onnx, to_onnx
    from qat.pipeline.onnx_runtime import OrtModel, load_ort_session

    out = Path(tempfile.mkdtemp(prefix="qat_bench_onnx_"))
    fp32_path = export_float_onnx(fp32, x, out / "fp32.onnx")
    int8_path = to_onnx(fake_quant, x, out / "int8.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(out / "int8_optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    saved = ort.SessionOptions()
    saved.intra_op_num_threads = threads
    saved.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    saved.log_severity_level = 3
    sessions = {
        "onnx_fp32": OrtModel(load_ort_session(fp32_path, threads)),
        "onnx_int8": OrtModel(load_ort_session(int8_path, threads)),
        "onnx_int8_saved": OrtModel(
            ort.InferenceSession(str(out / "int8_optimized.onnx"), saved, providers=["CPUExecutionProvider"])
        ),
    }
    shutil.rmtree(out)  # the sessions hold the graphs
    return sessions


def bench_model(name: str, shapes: list[tuple[int, int, int, int]], args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    rows = []
    for shape in shapes:
        x = torch.rand(*shape) * 2 - 1
        if args.onnx:
            settle_batchnorm(model, torch.rand(max(8, shape[0]), *shape[1:]) * 2 - 1)
            fake_quant = enable_fake_quant(disable_observer(calibrate(prepare_calibration(model, args.target), [x])))
            int8 = convert(fake_quant)
        else:
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
        if args.onnx:
            models.update(onnx_models(models["fp32"], fake_quant, x, args.threads))
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
        if args.onnx:
            fastest = min((k for k in t if k.startswith(("fp32", "onnx_fp32"))), key=t.get)
            ort_int8 = min(("onnx_int8", "onnx_int8_saved"), key=t.get)
            row.update({f"{k}_ms": 1e3 * v for k, v in t.items() if k.startswith("onnx")})
            row.update(
                fp32_fastest_any=fastest,
                ort_int8_vs_fastest_fp32=t[fastest] / t[ort_int8],
                ort_int8_vs_qat_int8_ts=t["int8_ts"] / t[ort_int8],
            )
            line += (
                f"\n{'':35s} ONNX Runtime: fp32 {1e3 * t['onnx_fp32']:6.2f} ms, int8 {1e3 * t['onnx_int8']:6.2f} ms "
                f"(saved optimized {1e3 * t['onnx_int8_saved']:6.2f} ms) | ORT int8 vs fastest fp32 ({fastest}) "
                f"{row['ort_int8_vs_fastest_fp32']:.2f}x, vs qat int8 TorchScript {row['ort_int8_vs_qat_int8_ts']:.2f}x"
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
    p.add_argument("--onnx", action="store_true", help="also time fp32 and QDQ int8 ONNX in ONNX Runtime (CPU)")
    args = p.parse_args()
    args.torchscript = args.torchscript or args.onnx
    print(f"# {cpu_description()}, {args.threads} thread(s), {args.clock} clock", flush=True)
    rows = [row for name in args.models for row in bench_model(name, args.shapes, args)]
    machine = {"cpu": cpu_description(), "threads": args.threads, "torch": torch.__version__}
    machine["clock"] = args.clock
    print(json.dumps({"machine": machine, "args": {**vars(args), "shapes": None}, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
