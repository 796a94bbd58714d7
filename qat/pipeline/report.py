"""The accuracy-drop report of a run: ``report.json``, ``report.md`` and ``report.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["build_report", "write_report"]

_LABELS = {"float": "float", "calib": "calibrated (fake-quant)", "qat": "QAT (fake-quant)", "int8": "int8 (real)"}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def build_report(
    identity: dict[str, Any], data: dict[str, Any], plan: dict[str, Any], records: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Collect the stage records into the report dictionary (deltas and ratios computed here)."""
    float_top1 = records.get("float", {}).get("metrics", {}).get("top1")
    stages = {}
    for name, rec in records.items():
        metrics = rec.get("metrics")
        if not metrics:
            continue
        entry = dict(metrics)
        entry["delta_top1_vs_float"] = metrics["top1"] - float_top1 if float_top1 is not None else None
        for key in ("median_step_s", "train_wall_s", "epochs", "source"):
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
        "data": data,
        "quant": plan,
        "stages": stages,
        "int8_vs_fake_quant": int8.get("agreement"),
        "size_bytes": size and {**size, "ratio_fp32_over_int8": _ratio(size["fp32"], size["int8"])},
        "latency_s": latency and {**latency, "speedup_int8": _ratio(latency["fp32_bn_folded"], latency["int8"])},
        "qat_over_float_step_time": _ratio(qat_step, float_step),
        "exports": int8.get("exports"),
    }


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:+.2f}" if signed else f"{100 * v:.2f}"


def _markdown(report: dict[str, Any]) -> str:
    data = report["data"]
    lines = [
        f"# Accuracy report: {report['model']} ({report['mode']})",
        "",
        f"Data: {data['name']}, {data['eval_samples']} held-out images ({data['image_size']} px, "
        f"{data['num_classes']} classes); {data['train_samples']} training images.",
        f"Target: {report['quant'].get('target')}. Every stage is evaluated on the same held-out split; "
        "int8 is the real converted model on CPU.",
        "",
        "| stage | top-1 % | top-5 % | loss | Δ top-1 vs float (pp) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, s in report["stages"].items():
        lines.append(
            f"| {_LABELS.get(name, name)} | {_pct(s['top1'])} | {_pct(s['top5'])} | {s['loss']:.4f} | "
            f"{_pct(s['delta_top1_vs_float'], signed=True)} |"
        )
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

    stages = report["stages"]
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
        bars = ax.bar(["fp32", "int8"], [v * scale for v in pair], color=["tab:gray", "tab:green"])
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
    paths["md"].write_text(_markdown(report))
    if report["stages"]:
        _chart(report, paths["png"])
    return {k: str(v) for k, v in paths.items()}
