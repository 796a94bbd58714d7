"""Higher-precision layers in the pipeline: the accuracy-driven automatic fallback and what it costs.

``quant.max_drop=<pp>``: after calibration, int8 top-1 is measured on a held-out slice of the
*training* data (the ``quant.fallback_batches`` batches after the calibration batches, eval
transforms; the evaluation split stays untouched). If it is more than ``max_drop`` points below
float, the layers are ranked by :func:`qat.analysis.sensitivity` (``only`` view, on that slice) and
moved to ``quant.fallback_precision`` (``float`` or ``int16``) one at a time, most sensitive first,
re-calibrating and re-measuring int8 after each, until the drop is met or ``quant.max_fallback``
layers are used. The chosen layers join ``quant.keep_float`` / ``quant.int16``; QAT starts from
that mix, and ``stages.json`` (``calib.fallback``) and the report show the path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from qat.analysis import sensitivity
from qat.pipeline.benchmark import compare_latency, state_dict_bytes
from qat.pipeline.errors import ConfigError
from qat.pipeline.evaluation import quantized_kernels_allowed
from qat.quant import (
    LayerSelectionError,
    PrecisionIsland,
    calibrate,
    convert,
    disable_observer,
    enable_fake_quant,
    prepare_calibration,
    quant_layers,
)

if TYPE_CHECKING:
    from qat.pipeline.plan import QuantPlan
    from qat.pipeline.stages import RunContext

__all__ = [
    "FALLBACK_PRECISIONS",
    "FallbackResult",
    "apply_fallback",
    "check_precision_fields",
    "greedy_fallback",
    "mixed_precision_record",
    "precision_costs",
    "prepare_for_plan",
]

FALLBACK_PRECISIONS = ("float", "int16")


def _names(value: Any, option: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    try:
        return tuple(str(v) for v in value)
    except TypeError:
        raise ConfigError(
            f"quant.{option}={value!r}: give a list of layer names or globs, e.g. [stem, 'blocks.3*']"
        ) from None


def check_precision_fields(plan: QuantPlan) -> None:
    """Normalise ``keep_float`` / ``int16`` to tuples and validate the fallback settings (in place)."""
    object.__setattr__(plan, "keep_float", _names(plan.keep_float, "keep_float"))
    object.__setattr__(plan, "int16", _names(plan.int16, "int16"))
    both = set(plan.keep_float) & set(plan.int16)
    if both:
        raise ConfigError(f"{sorted(both)} are in both quant.keep_float and quant.int16; put each layer in one list")
    if plan.max_drop is not None and not plan.max_drop >= 0:
        raise ConfigError(f"quant.max_drop must be >= 0 percentage points (or null: no fallback), got {plan.max_drop}")
    if plan.max_fallback < 1:
        raise ConfigError(f"quant.max_fallback must be >= 1 layer, got {plan.max_fallback}")
    if plan.fallback_precision not in FALLBACK_PRECISIONS:
        raise ConfigError(
            f"quant.fallback_precision={plan.fallback_precision!r} is unknown; use one of {list(FALLBACK_PRECISIONS)}"
        )
    if plan.fallback_batches < 1:
        raise ConfigError(f"quant.fallback_batches must be >= 1, got {plan.fallback_batches}")
    if plan.max_drop is not None and plan.mode == "float":
        raise ConfigError("quant.max_drop needs a quantized mode: use quant=calib or quant=qat")


@dataclass
class FallbackResult:
    """The fallback path: int8 top-1 before, then each layer moved and the drop after it (pp)."""

    float_top1: float
    int8_top1: float
    drop_pp: float
    max_drop: float
    precision: str
    held_out_samples: int
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen(self) -> list[str]:
        return [s["layer"] for s in self.steps]

    @property
    def met(self) -> bool:
        final = self.steps[-1]["drop_pp"] if self.steps else self.drop_pp
        return final <= self.max_drop

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chosen": self.chosen, "met": self.met}


@torch.no_grad()
def _top1(model: nn.Module, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    model.eval()
    correct = total = 0
    with quantized_kernels_allowed():
        for x, y in batches:
            out = model(x)
            out = out.dequantize() if out.is_quantized else out
            correct += int((out.argmax(1) == y).sum())
            total += y.numel()
    return correct / max(total, 1)


def _int8_top1(
    float_model: nn.Module,
    calib: Sequence[Any],
    held: Sequence[tuple[Tensor, Tensor]],
    prepare_kwargs: dict[str, Any],
    keep_float: Sequence[str],
    int16: Sequence[str],
) -> float:
    model = prepare_calibration(float_model, keep_float=list(keep_float), int16=list(int16), **prepare_kwargs)
    calibrate(model, calib)
    with quantized_kernels_allowed():
        int8 = convert(enable_fake_quant(disable_observer(model)))
    return _top1(int8, held)


def greedy_fallback(
    float_model: nn.Module,
    calib: Sequence[Any],
    held: Sequence[tuple[Tensor, Tensor]],
    max_drop: float,
    max_fallback: int,
    precision: str = "float",
    keep_float: Sequence[str] = (),
    int16: Sequence[str] = (),
    **prepare_kwargs: Any,
) -> FallbackResult:
    """Move the most sensitive layers to ``precision`` one at a time until int8 is within ``max_drop`` pp of float.

    ``calib`` calibrates every candidate mix; ``held`` (``(input, target)`` batches) measures float
    and int8 top-1 and ranks the layers. ``prepare_kwargs`` go to ``prepare_calibration``
    (``qconfig``, ``activation_observer``, ``high_precision_output``).
    """
    float_model = float_model.eval()
    float_top1 = _top1(float_model, held)
    keep_float, int16 = list(keep_float), list(int16)
    top1 = _int8_top1(float_model, calib, held, prepare_kwargs, keep_float, int16)
    result = FallbackResult(
        float_top1=float_top1,
        int8_top1=top1,
        drop_pp=100 * (float_top1 - top1),
        max_drop=max_drop,
        precision=precision,
        held_out_samples=sum(int(y.numel()) for _, y in held),
    )
    if result.met:
        return result
    ranking = sensitivity(
        float_model,
        held,
        qconfig=prepare_kwargs.get("qconfig", "x86"),
        activation_observer=prepare_kwargs.get("activation_observer", "percentile"),
        calib_batches=calib,
        keep_float=keep_float,
        int16=int16,
    )
    for record in ranking[:max_fallback]:
        (keep_float if precision == "float" else int16).append(record.name)
        top1 = _int8_top1(float_model, calib, held, prepare_kwargs, keep_float, int16)
        result.steps.append(
            {"layer": record.name, "precision": precision, "top1": top1, "drop_pp": 100 * (float_top1 - top1)}
        )
        if result.met:
            break
    return result


def apply_fallback(ctx: RunContext, float_model: nn.Module) -> QuantPlan:
    """Run (or, on a resumed run, replay) the fallback; returns the plan with the chosen layers added.

    The chosen layers are also written into the run config (``quant.keep_float`` / ``quant.int16``),
    so the int8 export and ``qat.evaluate`` rebuild the same mix.
    """
    plan = ctx.plan
    recorded = ctx.state.get("calib").get("fallback")
    if recorded is not None and ctx.state.done("calib"):
        chosen = list(recorded["chosen"])
    else:
        needed = plan.calib_batches + plan.fallback_batches
        batches = list(islice(ctx.data.calib_dataloader(), needed))
        calib, held = batches[: plan.calib_batches], batches[plan.calib_batches :]
        if not held:
            raise ConfigError(
                f"quant.max_drop needs training batches beyond the {plan.calib_batches} calibration batches to "
                f"measure the drop on, but the training data has only {len(batches)}; lower quant.calib_batches "
                "or use more training data (data.limit)"
            )
        try:
            result = greedy_fallback(
                float_model,
                calib,
                held,
                plan.max_drop,
                plan.max_fallback,
                plan.fallback_precision,
                plan.keep_float,
                plan.int16,
                qconfig=plan.target,
                activation_observer=plan.calib_observer,
                high_precision_output=plan.high_precision_output,
            )
        except LayerSelectionError as err:
            raise _selection_error(err) from None
        ctx.state.update("calib", fallback=result.to_dict())
        chosen = result.chosen
    key = "keep_float" if plan.fallback_precision == "float" else "int16"
    names = (*getattr(plan, key), *(c for c in chosen if c not in getattr(plan, key)))
    OmegaConf.update(ctx.cfg, f"quant.{key}", list(names), merge=False, force_add=True)
    return dataclasses.replace(plan, **{key: names})


def prepare_for_plan(float_model: nn.Module, plan: QuantPlan) -> nn.Module:
    """``prepare_calibration`` with the plan's target, observer and precision lists (user errors as ConfigError)."""
    try:
        return prepare_calibration(
            float_model,
            plan.target,
            activation_observer=plan.calib_observer,
            high_precision_output=plan.high_precision_output,
            keep_float=plan.keep_float,
            int16=plan.int16,
        )
    except LayerSelectionError as err:
        raise _selection_error(err) from None


def _selection_error(err: LayerSelectionError) -> ConfigError:
    return ConfigError(
        f"quant.keep_float / quant.int16: {err}. Fix the names (python -m qat.analyze <run> lists the layers)"
    )


def mixed_precision_record(ctx: RunContext, float_model: nn.Module, int8_model: nn.Module) -> dict[str, Any] | None:
    """:func:`precision_costs` of a run's int8 model, its latency against the same model all in int8."""
    if all(lay.precision == "int8" for lay in quant_layers(int8_model)):
        return None
    plan = ctx.plan
    plain = prepare_calibration(
        float_model,
        plan.target,
        activation_observer=plan.calib_observer,
        high_precision_output=plan.high_precision_output,
    )
    calibrate(plain, ctx.data.calib_dataloader(), num_batches=plan.calib_batches)
    with quantized_kernels_allowed():
        all_int8 = convert(enable_fake_quant(disable_observer(plain)))
    rc = ctx.cfg.report
    kwargs = {
        "runs": int(rc.latency_runs),
        "warmup": int(rc.latency_warmup),
        "rounds": int(rc.latency_rounds),
        "threads": rc.get("latency_threads"),
    }
    return precision_costs(int8_model, all_int8, ctx.data.example_input(1), kwargs)


def _int8_bytes_estimate(module: nn.Module) -> int:
    """What ``module``'s parameters would take in int8: weights one byte, biases and norms four."""
    return sum(p.numel() * (1 if p.dim() > 1 else 4) for p in module.parameters())


def precision_costs(
    int8_model: nn.Module,
    all_int8: nn.Module | None = None,
    example: Tensor | None = None,
    latency_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Every layer not in int8, with its size cost; with ``all_int8`` and ``example``, the latency cost.

    Size: bytes the layer takes as stored (float parameters) and the extra over int8 weights.
    Latency is measured for the whole model against the same model all in int8 (batch 1, side by
    side): the islands' cost cannot be separated from the requantization around them.
    """
    layers = [lay for lay in quant_layers(int8_model) if lay.precision != "int8"]
    if not layers:
        return None
    rows = []
    for lay in layers:
        island = int8_model.get_submodule(lay.path)
        inner = island.layer if isinstance(island, PrecisionIsland) else island
        stored = state_dict_bytes(inner)
        rows.append(
            {
                "name": lay.name,
                "precision": lay.precision,
                "kind": lay.kind,
                "size_bytes": stored,
                "extra_bytes_vs_int8": max(0, stored - _int8_bytes_estimate(inner)),
                "int16_qparams": island.int16_qparams() if isinstance(island, PrecisionIsland) else None,
                "runs_as": "float op between dequantize/quantize"
                if lay.precision == "float"
                else "float op with int8-grid weights and a simulated 16-bit output grid (torch has no int16 kernels)",
            }
        )
    out: dict[str, Any] = {"layers": rows}
    if all_int8 is not None and example is not None:
        with quantized_kernels_allowed():
            latency = compare_latency({"mixed": int8_model, "all_int8": all_int8}, example, **(latency_kwargs or {}))
        out["latency_s"] = {**latency, "ratio_mixed_over_all_int8": latency["mixed"] / latency["all_int8"]}
    return out


def precision_lines(report: dict[str, Any]) -> list[str]:
    """The report's markdown on layers not in int8 (and their cost) and the fallback path."""
    lines: list[str] = []
    fb = report.get("fallback")
    if fb:
        lines += [
            "",
            f"Automatic fallback (quant.max_drop={fb['max_drop']} pp, on {fb['held_out_samples']} held-out "
            f"training images): float {100 * fb['float_top1']:.2f} %, int8 {100 * fb['int8_top1']:.2f} % "
            f"(drop {fb['drop_pp']:.2f} pp)" + ("" if fb["steps"] else ": within the limit, nothing moved"),
        ]
        if fb["steps"]:
            lines += [
                "",
                "| step | layer | precision | int8 top-1 % after | drop (pp) |",
                "| ---: | --- | --- | ---: | ---: |",
            ]
            lines += [
                f"| {i} | {s['layer']} | {s['precision']} | {100 * s['top1']:.2f} | {s['drop_pp']:.2f} |"
                for i, s in enumerate(fb["steps"], 1)
            ]
            lines.append("Drop met." if fb["met"] else "Drop NOT met within quant.max_fallback layers.")
    mp = report.get("mixed_precision")
    if mp:
        lines += [
            "",
            "Layers not in int8:",
            "",
            "| layer | precision | kind | stored (KiB) | extra vs int8 weights (KiB) | runs as |",
            "| --- | --- | --- | ---: | ---: | --- |",
        ]
        lines += [
            f"| {r['name']} | {r['precision']} | {r['kind']} | {r['size_bytes'] / 1024:.1f} | "
            f"{r['extra_bytes_vs_int8'] / 1024:.1f} | {r['runs_as']} |"
            for r in mp["layers"]
        ]
        lat = mp.get("latency_s")
        if lat:
            lines.append(
                f"Latency cost (batch 1, side by side): mixed {1e3 * lat['mixed']:.3f} ms vs all-int8 "
                f"{1e3 * lat['all_int8']:.3f} ms ({lat['ratio_mixed_over_all_int8']:.2f}x)"
            )
    return lines
