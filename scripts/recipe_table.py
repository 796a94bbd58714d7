"""Print the recipe table (markdown) from finished runs' ``report.json``.

    python scripts/recipe_table.py runs/mnv2_cifar10 runs/mnv2_ptq

The first run is the QAT run (float → calibration → QAT → int8); an optional second one is the
PTQ run (``quant=calib`` from the first run's float checkpoint). Every figure is read from the
reports, nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def load(run: str) -> dict[str, Any]:
    path = Path(run) / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is the run finished? (its stages.json says how far it got)")
    return json.loads(path.read_text())


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def table(qat: dict[str, Any], ptq: dict[str, Any] | None) -> str:
    stages = qat["stages"]
    float_top1 = stages["float"]["top1"]
    rows = [("float", stages["float"])]
    if ptq is not None:
        rows.append(("PTQ int8 (calibration only, real int8)", ptq["stages"]["int8"]))
    rows += [
        ("calibrated fake-quant (QAT start)", stages.get("calib")),
        ("QAT fake-quant", stages.get("qat")),
        ("QAT int8 (real int8)", stages["int8"]),
    ]
    lines = ["| stage | top-1 % | top-5 % | Δ top-1 vs float (pp) |", "| --- | ---: | ---: | ---: |"]
    for label, s in rows:
        if s is None:
            continue
        delta = f"{100 * (s['top1'] - float_top1):+.2f}"
        lines.append(f"| {label} | {pct(s['top1'])} | {pct(s['top5'])} | {delta} |")
    agree = qat.get("int8_vs_fake_quant") or {}
    lines += ["", f"- int8 vs QAT fake-quant top-1 agreement: {pct(agree.get('top1'))} % of the test images"]
    if qat.get("qat_over_float_step_time"):
        lines.append(f"- QAT / float training step time (medians, same run): {qat['qat_over_float_step_time']:.2f}×")
    size = qat.get("size_bytes")
    if size:
        lines.append(
            f"- size: fp32 {size['fp32'] / 2**20:.2f} MiB → int8 {size['int8'] / 2**20:.2f} MiB "
            f"({size['ratio_fp32_over_int8']:.2f}× smaller)"
        )
    lat = qat.get("latency_s")
    if lat:
        lines.append(
            f"- batch-1 latency ({lat.get('clock', 'wall')} clock, {lat['threads']} thread): fp32 (BN folded) "
            f"{1e3 * lat['fp32_bn_folded']:.2f} ms, int8 {1e3 * lat['int8']:.2f} ms ({lat['speedup_int8']:.2f}×)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("qat_run")
    p.add_argument("ptq_run", nargs="?")
    args = p.parse_args(argv)
    print(table(load(args.qat_run), load(args.ptq_run) if args.ptq_run else None))


if __name__ == "__main__":
    main()
