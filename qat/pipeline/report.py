"""The accuracy-drop report of a run: ``report.json``, ``report.md`` and ``report.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qat.pipeline.fallback import precision_lines

__all__ = ["build_report", "write_report"]

_LABELS = {"float": "float", "calib": "calibrated (fake-quant)", "qat": "QAT (fake-quant)", "int8": "int8 (real)"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(
    identity: dict[str, Any],
    data: dict[str, Any],
    plan: dict[str, Any],
    records: dict[str, dict[str, Any]],
    complexity: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collect the stage records into the report dictionary (deltas and ratios computed here).

    ``complexity``: the float model's ``params`` and ``macs`` per sample at ``input_shape``
    (:func:`qat.pipeline.benchmark.model_complexity`)."""
    float_top1 = records.get("float", {}).get("metrics", {}).get("top1")
    stages = {}
    for name, rec in records.items():
        metrics = rec.get("metrics")
        if not metrics:
            continue
        entry = dict(metrics)
        entry["delta_top1_vs_float"] = metrics["top1"] - float_top1 if float_top1 is not None else None
        for key in ("median_step_s", "train_wall_s", "epochs", "source", "train_top1", "health_warning"):
            if rec.get(key) is not None:
                entry[key] = rec[key]
        stages[name] = entry
    int8 = records.get("int8", {})
    float_step = records.get("float", {}).get("median_step_s")
    qat_step = records.get("qat", {}).get("median_step_s")
    size, latency = int8.get("size_bytes"), int8.get("latency_s")
    return {
        "model": identity.get("name"),
        "mode": identity.get("mode"),
        "complexity": complexity,
        "data": data,
        "quant": plan,
        "stages": stages,
        "int8_vs_fake_quant": int8.get("agreement"),
        "size_bytes": size and {**size, "ratio_fp32_over_int8": _ratio(size["fp32"], size["int8"])},
        "latency_s": latency and {**latency, "speedup_int8": _ratio(latency["fp32_bn_folded"], latency["int8"])},
        "qat_over_float_step_time": _ratio(qat_step, float_step),
        "precise_bn": records.get("float", {}).get("precise_bn"),
        "optim": records.get("float", {}).get("optim"),
        "exports": int8.get("exports"),
        "mixed_precision": int8.get("mixed_precision"),
        "fallback": records.get("calib", {}).get("fallback"),
        "onnx": _onnx_entry(int8.get("onnx")),
    }


def _onnx_entry(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ONNX Runtime record with its int8-over-fp32 speed-up."""
    if not rec:
        return None
    lat = rec.get("latency_s") or {}
    return {**rec, "speedup_int8": _ratio(lat.get("onnx_fp32"), lat.get("onnx_int8"))}


def _onnx_lines(report: dict[str, Any]) -> list[str]:
    rec = report.get("onnx")
    if not rec:
        return []
    m, lat = rec["metrics"], rec["latency_s"]
    return [
        "",
        f"ONNX Runtime (CPU, QDQ `{rec['int8']}`): int8 top-1 {_pct(m['top1'])} %, top-1 prediction agreement "
        f"with qat's int8 model {_pct(rec['agreement_with_int8'])} %; batch-1 latency ({lat['threads']} thread(s), "
        f"{lat.get('clock', 'wall')} clock) fp32 `{rec['fp32']}` {1e3 * lat['onnx_fp32']:.3f} ms, int8 "
        f"{1e3 * lat['onnx_int8']:.3f} ms ({rec['speedup_int8']:.2f}x). "
        "`python -m qat.evaluate <run dir> --onnx` re-evaluates it.",
    ]


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _complexity_lines(c: dict[str, Any] | None) -> list[str]:
    if not c:
        return []
    shape = "x".join(str(d) for d in c["input_shape"])
    return [f"Model: {c['params']:,} parameters, {c['macs'] / 1e6:,.1f} M MACs per {shape} input."]


def _optim_lines(optim: dict[str, Any] | None) -> list[str]:
    """The float-training settings used and where each came from (model default, config, lr finder)."""
    if not optim:
        return []
    parts = [
        f"{key} {rec['value']:.4g} ({rec['source']})"
        for key, rec in optim.items()
        if isinstance(rec, dict) and "source" in rec and rec.get("value") is not None
    ]
    lines = ["", "Float training settings: " + ", ".join(parts) + "."]
    lr = optim.get("lr") or {}
    if lr.get("source") == "auto" and lr.get("plot"):
        lines.append(f"Learning-rate finder: plot `{lr['plot']}`.")
    return lines


def _markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    lines = [
        f"# Accuracy report: {report['model']} ({report['mode']})",
        "",
        f"Data: {data['name']}, {data['eval_samples']} held-out images ({data['image_size']} px, "
        f"{data['num_classes']} classes); {data['train_samples']} training images.",
        f"Target: {report['quant'].get('target')}. Every stage is evaluated on the same held-out split; "
        "int8 is the real converted model on CPU.",
        *_complexity_lines(report.get("complexity")),
        "",
        "| stage | top-1 % | top-5 % | loss | Δ top-1 vs float (pp) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in report["stages"].items():
        lines.append(
            f"| {_LABELS.get(name, name)} | {_pct(s['top1'])} | {_pct(s['top5'])} | {s['loss']:.4f} | "
            f"{_pct(s['delta_top1_vs_float'], signed=True)} |"
        )
    warnings = [s["health_warning"] for s in report["stages"].values() if s.get("health_warning")]
    if warnings:
        lines += ["", "**Health check warnings:**", *[f"- {w}" for w in warnings]]
    lines += _optim_lines(report.get("optim"))
    pbn = report.get("precise_bn")
    if pbn:
        lines += [
            "",
            f"Precise BN: BN running statistics recomputed over {pbn['batches']} training batches (eval transforms) "
            "before float evaluation, calibration and QAT"
            if pbn["batches"]
            else "Precise BN: off (precise_bn_batches=0); BN running statistics are the training run's",
        ]
    agree = report.get("int8_vs_fake_quant")
    if agree:
        lines += ["", f"int8 vs {agree['reference']} top-1 prediction agreement: {_pct(agree['top1'])} %"]
    size = report.get("size_bytes")
    if size:
        lines.append(
            f"Model size (saved state dict): fp32 {size['fp32'] / 1024:.1f} KiB, int8 {size['int8'] / 1024:.1f} KiB "
            f"({size['ratio_fp32_over_int8']:.2f}x smaller)"
        )
    lat = report.get("latency_s")
    if lat:
        lines.append(
            f"Latency (batch 1, median of {lat['runs']} runs, best of {lat['rounds']} rounds, "
            f"{lat['threads']} thread(s), {lat.get('clock', 'wall')} clock): fp32 with BN folded "
            f"{1e3 * lat['fp32_bn_folded']:.3f} ms, int8 {1e3 * lat['int8']:.3f} ms "
            f"({lat['speedup_int8']:.2f}x)"
        )
    ratio = report.get("qat_over_float_step_time")
    if ratio is not None:
        lines.append(f"QAT training step / float training step (median, same run): {ratio:.2f}x")
    lines += precision_lines(report)
    lines += _onnx_lines(report)
    exports = report.get("exports")
    if exports:
        lines += [
            "",
            f"Exports: `{exports['torchscript']}` (`torch.jit.load`, plain torch; set "
            f"`torch.backends.quantized.engine = '{exports['engine']}'` first) and `{exports['state']}` "
            "(`python -m qat.evaluate <run dir>` re-evaluates it).",
        ]
    return "\n".join(lines) + "\n"


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = dict(report["stages"])
    onnx = report.get("onnx")
    if onnx:
        stages["int8 (ONNX Runtime)"] = onnx["metrics"]
    names = [_LABELS.get(n, n) for n in stages]
    top1 = [100 * s["top1"] for s in stages.values()]
    top5 = [100 * s["top5"] for s in stages.values()]
    extra = [k for k in ("size_bytes", "latency_s") if report.get(k)]
    fig, axes = plt.subplots(1, 1 + len(extra), figsize=(6 + 3.2 * len(extra), 4), squeeze=False)
    ax = axes[0][0]
    xs = range(len(names))
    bars = ax.bar([x - 0.2 for x in xs], top1, width=0.4, label="top-1")
    ax.bar([x + 0.2 for x in xs], top5, width=0.4, label="top-5", alpha=0.6)
    ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=-12, color="white")
    ax.set_xticks(list(xs), names, rotation=15, fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(max(0.0, min(top1) - 10), 100)
    ax.set_title(f"{report['model']} on {report['data']['name']}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, fontsize=8)
    for ax, key in zip(axes[0][1:], extra):
        values = report[key]
        if key == "size_bytes":
            pair, unit, scale = (values["fp32"], values["int8"]), "KiB", 1 / 1024
            ax.set_title("model size")
        else:
            pair, unit, scale = (values["fp32_bn_folded"], values["int8"]), "ms", 1e3
            ax.set_title("latency, batch 1")
        labels, colors = ["fp32", "int8"], ["tab:gray", "tab:green"]
        if key == "latency_s" and onnx:
            pair = (*pair, onnx["latency_s"]["onnx_fp32"], onnx["latency_s"]["onnx_int8"])
            labels, colors = [*labels, "ORT fp32", "ORT int8"], [*colors, "silver", "tab:olive"]
        bars = ax.bar(labels, [v * scale for v in pair], color=colors)
        ax.bar_label(bars, fmt="%.0f" if key == "size_bytes" else "%.2f", fontsize=8)
        ax.set_ylabel(unit)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], run_dir: Path) -> dict[str, str]:
    """Write ``report.json``, ``report.md`` and ``report.png`` into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "png": run_dir / "report.png"}
    paths["json"].write_text(json.dumps(report, indent=2))
    analysis = run_dir / "analysis" / "analysis.md"
    link = "\nPer-layer analysis (similarity, sensitivity): [analysis/analysis.md](analysis/analysis.md)\n"
    paths["md"].write_text(_markdown(report) + (link if analysis.is_file() else ""))
    if report["stages"]:
        _chart(report, paths["png"])
    return {k: str(v) for k, v in paths.items()}
