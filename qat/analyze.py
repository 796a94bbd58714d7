"""Per-layer analysis of a finished run: ``python -m qat.analyze <run folder> [data.key=value ...]``.

Rebuilds the run's float model (``float/last.ckpt`` or its ``float_ckpt``, with the run's precise
BN), its fake-quant model (``qat/last.ckpt`` for a QAT run, else ``calib/calibrated.pt``) and its
int8 model (``int8/int8_state.pt``) on the run's own data config, and writes ``<run>/analysis/``:
``similarity.csv`` (float vs fake-quant, each layer on its own), ``similarity_int8.csv``
(fake-quant vs int8, cumulative), ``sensitivity.csv``, ``analysis.md`` and PNG charts. The run's
``report.md`` then links ``analysis/analysis.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from qat.analysis import (
    SENSITIVITY_VIEWS,
    LayerSensitivity,
    LayerSimilarity,
    layer_similarity,
    markdown_table,
    plot_sensitivity,
    plot_similarity,
    sensitivity,
    write_csv,
)
from qat.pipeline.checkpoints import load_float_weights, load_module_weights, safe_load
from qat.pipeline.errors import CheckpointError, ConfigError, PipelineError
from qat.pipeline.evaluation import quantized_kernels_allowed
from qat.pipeline.export import load_int8_state, plan_from_config, rebuild_int8
from qat.pipeline.fallback import prepare_for_plan
from qat.pipeline.plan import QuantPlan
from qat.pipeline.precise_bn import recompute_bn_stats
from qat.pipeline.report import write_report
from qat.quant import disable_observer, enable_fake_quant, freeze_activation_observers, start_qat

__all__ = ["analyze_run", "main"]


def _float_model(run_dir: Path, cfg: Any, data: Any) -> nn.Module:
    model = instantiate(cfg.model)
    ckpt = run_dir / "float" / "last.ckpt"
    if ckpt.is_file():
        load_module_weights(model, ckpt)
    elif cfg.get("float_ckpt"):
        info = {"name": cfg.model.get("name", type(model).__name__), "num_classes": data.num_classes}
        load_float_weights(model, cfg.float_ckpt, info)
    else:
        raise CheckpointError(
            f"{run_dir} has no float/last.ckpt and its config no float_ckpt; pass the folder of a complete run"
        )
    recompute_bn_stats(model, data.calib_dataloader(), int(cfg.get("precise_bn_batches", 0) or 0))
    return model.eval()


def _fake_quant_model(run_dir: Path, float_model: nn.Module, plan: QuantPlan) -> nn.Module:
    """The run's fake-quant model as it was converted: QAT weights for a QAT run, else the calibrated grids."""
    model = prepare_for_plan(float_model, plan)
    qat_ckpt, calib = run_dir / "qat" / "last.ckpt", run_dir / "calib" / "calibrated.pt"
    if plan.mode == "qat" and qat_ckpt.is_file():
        start_qat(
            model,
            fixed_activation_scales=plan.activation_scales == "fixed",
            bn=plan.bn,
            learn_activation_scales=plan.activation_scales == "learn",
            learn_weight_scales=getattr(plan, "weight_scales", "track") == "learn",
        )
        load_module_weights(model, qat_ckpt)
    elif calib.is_file():
        model.load_state_dict(safe_load(calib, fix=f"rerun the run in {run_dir} to calibrate again"))
    else:
        raise CheckpointError(f"{run_dir} has neither qat/last.ckpt nor calib/calibrated.pt; pass a complete run")
    enable_fake_quant(model)
    freeze_activation_observers(model)
    return disable_observer(model).eval()


def _fmt_db(v: float) -> str:
    return "exact" if math.isinf(v) and v > 0 else f"{v:.1f} dB"


def _summary(
    name: str,
    plan: QuantPlan,
    similar: list[LayerSimilarity],
    int8_sim: list[LayerSimilarity],
    sens: list[LayerSensitivity],
) -> str:
    worst = min(similar, key=lambda r: r.sqnr_db)
    finite = sorted(r.sqnr_db for r in similar if math.isfinite(r.sqnr_db))
    median = finite[len(finite) // 2] if finite else float("nan")
    top = sens[:2]
    lines = [
        f"# Per-layer analysis: {name}",
        "",
        f"Target {plan.target}, {len(similar)} quantized layers. Layers are named after the modules of the float "
        "model (a fused conv+BN+act under its block).",
        "",
        f"- Lowest SQNR, float vs fake-quant (each layer quantized on its own, channel-averaged): **{worst.name}** "
        f"{_fmt_db(worst.sqnr_db)} (median over layers {median:.1f} dB).",
        f"- Most sensitive ({sens[0].view} view: {sens[0].measured}): "
        + ", ".join(f"**{r.name}** ({r.score:.3g})" for r in top)
        + ".",
        f"- If int8 loses accuracy, try `quant.keep_float=[{','.join(r.name for r in top)}]` "
        "(or `quant.int16=[...]`), or let `quant.max_drop=<pp>` choose.",
        "",
        "![SQNR per layer](similarity.png) ![sensitivity](sensitivity.png)",
        "",
        "## Sensitivity (most sensitive first)",
        "",
        markdown_table(sens, ["name", "kind", "score", "rel_l2", "sqnr_db", "agreement", "accuracy", "float_accuracy"]),
        "## Similarity: float vs fake-quant (forward order, each layer on its own)",
        "",
        markdown_table(
            similar, ["name", "kind", "precision", "sqnr_db", "sqnr_pooled_db", "cosine", "rel_l2", "max_abs"]
        ),
        "## Similarity: fake-quant vs int8 (forward order, cumulative)",
        "",
        markdown_table(int8_sim, ["name", "kind", "precision", "sqnr_db", "cosine", "rel_l2", "max_abs"]),
    ]
    return "\n".join(lines)


def analyze_run(
    run_dir: str | Path, overrides: Sequence[str] = (), batches: int = 4, view: str = "only"
) -> dict[str, Path]:
    """Write ``<run_dir>/analysis/`` for a complete quant=calib/qat run; returns the written paths."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"run folder {run_dir} does not exist; pass the folder of a quant=calib/qat run")
    if view not in SENSITIVITY_VIEWS:
        raise ConfigError(f"--view {view!r} is unknown; use one of {list(SENSITIVITY_VIEWS)}")
    if batches < 1:
        raise ConfigError(f"--batches must be >= 1, got {batches}")
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* overrides apply to an analysis, got {bad}")
    payload = load_int8_state(run_dir)
    cfg = OmegaConf.merge(OmegaConf.create(payload["config"]), OmegaConf.from_dotlist(list(overrides)))
    plan = plan_from_config(payload["config"])
    data = instantiate(cfg.data)
    data.setup()
    float_model = _float_model(run_dir, cfg, data)
    fake_quant = _fake_quant_model(run_dir, float_model, plan)
    val = list(islice(data.val_dataloader(), batches))
    calib = list(islice(data.calib_dataloader(), plan.calib_batches))
    with quantized_kernels_allowed():
        int8 = rebuild_int8(payload)
        similar = layer_similarity(float_model, fake_quant, val)
        int8_sim = layer_similarity(fake_quant, int8, val)
    sens = sensitivity(
        float_model,
        val,
        qconfig=plan.target,
        activation_observer=plan.calib_observer,
        view=view,
        calib_batches=calib,
        keep_float=plan.keep_float,
        int16=plan.int16,
    )
    out = run_dir / "analysis"
    paths = {
        "similarity_csv": write_csv(similar, out / "similarity.csv"),
        "similarity_int8_csv": write_csv(int8_sim, out / "similarity_int8.csv"),
        "sensitivity_csv": write_csv(sens, out / "sensitivity.csv"),
        "similarity_png": plot_similarity(similar, out / "similarity.png"),
        "sensitivity_png": plot_sensitivity(sens, out / "sensitivity.png"),
    }
    name = str(cfg.model.get("name", type(float_model).__name__))
    paths["md"] = out / "analysis.md"
    paths["md"].write_text(_summary(name, plan, similar, int8_sim, sens))
    report = run_dir / "report.json"
    if report.is_file():
        write_report(json.loads(report.read_text()), run_dir)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.analyze", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="folder of a quant=calib/qat run")
    parser.add_argument("overrides", nargs="*", help="data.key=value overrides (e.g. data.root=/data/cifar10)")
    parser.add_argument("--batches", type=int, default=4, help="held-out batches measured (default 4)")
    parser.add_argument("--view", default="only", help=f"sensitivity view: {' | '.join(SENSITIVITY_VIEWS)}")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():
            paths = analyze_run(args.path, args.overrides, args.batches, args.view)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"analysis written: {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
