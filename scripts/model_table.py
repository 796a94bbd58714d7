"""Generate docs/models.md: every registered model's parameters, MACs, int8 size and latency.

    python scripts/model_table.py                 # all models, writes docs/models.md
    python scripts/model_table.py --models mobilenet_v2 resnet18 --out -   # print only

Counted at 1000 classes and 1x3x224x224 with the models' ImageNet stems. MACs come from
``torch.utils.flop_counter`` (its FLOPs / 2: convs, linears and matmuls; pooling, BN and
activations are not counted), through :func:`qat.pipeline.benchmark.count_macs`. int8 size is the saved state dict of the converted model. Latency: BN-folded fp32 vs int8,
batch 1, measured side by side (interleaved rounds, best round's median) on this machine.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

from qat.models import create_model, list_models
from qat.pipeline.benchmark import (
    compare_latency,
    count_macs,
    cpu_description,
    fold_batchnorm,
    quantize_for_timing,
    state_dict_bytes,
)

REPO = Path(__file__).resolve().parents[1]


# Registered names whose torchvision model is the parameter-count reference (counted live): the
# same name unless TORCHVISION_NAMES says otherwise.
TORCHVISION_REFERENCE = (
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    *(f"efficientnet_b{i}" for i in range(8)),
    "resnet18",
    "resnet50_v1b",
    "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0",
    "shufflenet_v2_x1_5",
    "shufflenet_v2_x2_0",
    "googlenet",
    "inception_v3",
)
TORCHVISION_NAMES = {"resnet50_v1b": "resnet50"}
# Constructor arguments that make the torchvision model the reference one (training-only aux heads off).
TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}

LATENCY_NOTE = """
## Reading the latency columns

The latency is one sample of a shared 2-core machine: CPU time leaves out waiting for a core,
but a co-running job still slows the work itself (the two "cores" share caches), so single rows
can be off by 2x. How much int8 can gain depends on the CPU named above: without VNNI, fbgemm's
int8 multiply-accumulate tops out near 2x over fp32 FMA (HENet TinyM measured 1.49x on such a
CPU, BENCHMARKS.md section 3); with VNNI it goes further. At one thread PyTorch runs many batch-1
fp32 convs on its im2col path (`_slow_conv2d_forward`) rather than oneDNN, which flatters int8;
BENCHMARKS.md section 3 also times 2 threads and channels-last fp32. Where int8 gains least, and why:

- EfficientNet: SiLU has no int8 kernel; it runs as x * sigmoid(x), a sigmoid lookup (`qat::lut_u8`
  on AVX-512 VBMI CPUs, else dequantize -> sigmoid -> quantize) and an int8 multiply on every
  expanded tensor (the SE gates run as one fused op, `qat::channel_gate_u8`, on AVX-512 VNNI CPUs).
- GhostNet, ShuffleNet V1/V2, Lite-HRNet, PP-LCNet, MobileNetV3-Small: many cheap ops (concat,
  channel split/shuffle, resize, pooling) whose int8 forms requantize or copy, and small
  convs where fbgemm's per-call activation packing and requantization outweigh the arithmetic.
  At batch 1 int8 can be slower than fp32 on a CPU; an NPU runs these ops natively.
- ESPNet v1/v2: per-channel PReLUs that do not fuse into a conv (each an int8 lookup: dequantize ->
  PReLU -> quantize), standalone BNs after concats, dilated convs, and many adds/concats.
- MobileViT: LayerNorm, softmax and the patch unfold/fold run as requantizing ops between the
  int8 matmuls; attention at batch 1 is small matrices where fbgemm gains little.
"""

NOT_IN_ZOO = """
## Segmentation: ESPNet v1

ESPNet v1 is a segmentation network. Its encoder, ESPNet-C, is registered as `espnet_c` (the table
above; its classifier runs after the global pool). The whole segmenter, the encoder plus the authors'
decoder, is `qat.models.espnet_v1.ESPNet`: 365,109 parameters at its default 20 classes, equal to the
authors' code (the paper's 0.364M), per-pixel logits at the input size, 2x2 transposed convs as 1x1
conv + pixel shuffle (`qat.nn.PixelShuffleUp`, the same function). Build it directly and quantize it
with `qat.quant`; `tests/test_models_espnet_v1.py` runs its int8 contract. `train.py` trains classifiers.

## Not in the zoo

AdderNet cannot be int8-quantized by nature: its layers compute L1 distances (sums of absolute
differences) instead of multiply-accumulates, and no int8 kernel in torch (fbgemm, qnnpack, x86)
computes that, so it is left out rather than faked.
"""


def torchvision_params(name: str) -> int | None:
    if name not in TORCHVISION_REFERENCE:
        return None
    import torchvision

    with torch.device("meta"):
        arch = TORCHVISION_NAMES.get(name, name)
        model = getattr(torchvision.models, arch)(weights=None, **TORCHVISION_KWARGS.get(name, {}))
    return sum(p.numel() for p in model.parameters())


def model_row(name: str, size: int, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=1000).eval()
    x = torch.rand(1, 3, size, size) * 2 - 1
    int8 = quantize_for_timing(model, x)
    models = {"fp32": fold_batchnorm(model), "int8": int8}
    t = compare_latency(models, x, args.runs, 2, args.threads, args.rounds, args.clock)
    return {
        "name": name,
        "params": sum(p.numel() for p in model.parameters()),
        "torchvision": torchvision_params(name),
        "macs": count_macs(model, x),
        "fp32_mb": state_dict_bytes(model) / 2**20,
        "int8_mb": state_dict_bytes(int8) / 2**20,
        "fp32_ms": 1e3 * t["fp32"],
        "int8_ms": 1e3 * t["int8"],
    }


_CLOCKS = {
    "cpu": "CPU time of the one computing thread: waiting for a busy shared machine is left out",
    "wall": "wall time: noisy on a shared machine, read the ratio",
}


def render(rows: list[dict], args: argparse.Namespace) -> str:
    today = datetime.date.today().isoformat()
    lines = [
        "# Model zoo",
        "",
        f"Generated by `python {' '.join(sys.argv)}` on {today}: {cpu_description()}, "
        f"{args.threads} thread(s), torch {torch.__version__}, x86 int8 target. Counted at 1000 classes and "
        f"1x3x{args.size}x{args.size} with the ImageNet stem; MACs by torch.utils.flop_counter (convs, linears, matmuls). Latency is batch 1, "
        f"BN-folded fp32 vs real int8 measured side by side ({args.rounds} interleaved rounds of "
        f"{args.runs} runs, best round's median, {_CLOCKS[args.clock]}). "
        "Every model here passes the int8 contract in `tests/test_models.py`.",
        "",
        "`torchvision` is the parameter count of torchvision's model of the same name (`resnet50` for "
        "`resnet50_v1b`; built here, weights=None); the tests assert equality. Counts of models without "
        "a torchvision namesake are checked against their papers or official code (timm where it has "
        "them) in `tests/test_models_*.py`; each builder's docstring states the reference and any "
        "difference. Adding a model: [adding_a_model.md](adding_a_model.md).",
        "",
        "| model | params | torchvision | MMACs | fp32 MB | int8 MB | fp32 ms | int8 ms | int8 speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ref = (
            "—"
            if r["torchvision"] is None
            else ("equal" if r["torchvision"] == r["params"] else f"{r['torchvision']:,}")
        )
        lines.append(
            f"| `{r['name']}` | {r['params']:,} | {ref} | {r['macs'] / 1e6:,.0f} | {r['fp32_mb']:.1f} | {r['int8_mb']:.1f} "
            f"| {r['fp32_ms']:.1f} | {r['int8_ms']:.1f} | {r['fp32_ms'] / r['int8_ms']:.2f}x |"
        )
    return "\n".join(lines) + "\n" + LATENCY_NOTE + NOT_IN_ZOO


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu", help="cpu: thread CPU time (needs --threads 1)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(REPO / "docs" / "models.md"), help="'-' prints instead of writing")
    args = p.parse_args()
    rows = []
    for name in args.models or list_models():
        rows.append(model_row(name, args.size, args))
        r = rows[-1]
        print(
            f"{name:28s} {r['params']:>11,} params {r['macs'] / 1e6:8.0f} MMACs  "
            f"fp32 {r['fp32_ms']:7.1f} ms  int8 {r['int8_ms']:7.1f} ms",
            file=sys.stderr,
            flush=True,
        )
    text = render(rows, args)
    if args.out == "-":
        print(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
