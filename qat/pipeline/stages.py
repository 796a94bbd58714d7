"""The stage runner: float → calibration → QAT → int8, each stage evaluated on the same held-out split.

Every stage writes into the run folder (``float/``, ``calib/``, ``qat/``, ``int8/``) and records
itself in ``stages.json``: a complete stage is skipped on a rerun in the same folder, an
interrupted training stage resumes from its ``last.ckpt``. Under DDP every rank trains and
calibrates; only rank 0 evaluates, exports and writes the report.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from qat.models import list_models
from qat.pipeline.benchmark import compare_latency, fold_batchnorm, state_dict_bytes
from qat.pipeline.callbacks import FreezeBNStats, FreezeObservers, NaNLossGuard, StepTimer, SyncRankState
from qat.pipeline.checkpoints import load_float_weights, load_module_weights, read_checkpoint
from qat.pipeline.data import ClassificationDataModule
from qat.pipeline.errors import ConfigError, ModelRejectedError, PipelineError, UnknownModelError
from qat.pipeline.evaluation import EvalResult, evaluate_model, prediction_agreement, quantized_kernels_allowed
from qat.pipeline.export import export_int8
from qat.pipeline.module import ClassificationModule
from qat.pipeline.plan import QuantPlan
from qat.pipeline.report import build_report, write_report
from qat.pipeline.state import StageState
from qat.quant import (
    calibrate,
    check_model,
    convert,
    enable_fake_quant,
    freeze_activation_observers,
    get_qconfig,
    prepare_calibration,
    start_qat,
)

__all__ = ["RunContext", "build_data", "build_model", "build_plan", "run_pipeline"]

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What every stage needs: the config, the run folder, the plan, the data and the stage state."""

    cfg: DictConfig
    run_dir: Path
    plan: QuantPlan
    data: ClassificationDataModule
    state: StageState
    model_info: dict[str, Any]
    rank_zero: bool

    @property
    def progress(self) -> bool:
        return bool(self.cfg.trainer.get("enable_progress_bar", True))


def _instantiate(cfg: DictConfig) -> Any:
    """``instantiate``, re-raising our own errors (a bad value in a config) unwrapped."""
    try:
        return instantiate(cfg)
    except InstantiationException as err:
        if isinstance(err.__cause__, PipelineError):
            raise err.__cause__ from None
        raise


def build_plan(cfg: DictConfig) -> QuantPlan:
    plan = _instantiate(cfg)
    if not isinstance(plan, QuantPlan):
        raise ConfigError(f"the quant config must instantiate qat.pipeline.plan.QuantPlan, got {type(plan).__name__}")
    return plan


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate the model config; an unregistered name lists the closest registered ones."""
    name = cfg.get("name")
    if cfg.get("_target_") == "qat.models.create_model" and name not in list_models():
        raise UnknownModelError(str(name), list_models())
    return _instantiate(cfg)


def build_data(cfg: DictConfig) -> ClassificationDataModule:
    data = _instantiate(cfg)
    if not isinstance(data, ClassificationDataModule):
        raise ConfigError(f"the data config must instantiate a ClassificationDataModule, got {type(data).__name__}")
    return data


def _check_float_model(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """``check_model`` before any training: a model that would not quantize correctly is refused."""
    report = check_model(model, example)
    if not report.ok:
        raise ModelRejectedError(
            f"model {name!r} would not quantize correctly, so training was not started.\n{report}\n"
            "Fix each finding as its 'Fix' says, or pick another model."
        )
    for finding in report.warnings:
        log.warning("check_model: %s", finding)


def _evaluate(ctx: RunContext, stage: str, model: nn.Module) -> EvalResult | None:
    """Evaluate on rank 0 and record the metrics (a completed stage keeps its recorded ones)."""
    if not ctx.rank_zero:
        return None
    model = model.cpu().eval()
    result = evaluate_model(
        model, ctx.data.val_dataloader(), ctx.data.num_classes, progress=f"eval {stage}" if ctx.progress else None
    )
    ctx.state.update(stage, metrics=result.metrics())
    log.info(
        "stage %-5s top-1 %.2f %%  top-5 %.2f %%  loss %.4f", stage, 100 * result.top1, 100 * result.top5, result.loss
    )
    return result


def _fit(
    ctx: RunContext, stage: str, model: nn.Module, max_epochs: int, lr_scale: float, callbacks: list[pl.Callback]
) -> dict[str, Any]:
    """Train ``model`` with Lightning, resuming from ``<stage>/last.ckpt`` when it exists."""
    cfg = ctx.cfg
    stage_dir = ctx.run_dir / stage
    last = stage_dir / "last.ckpt"
    resume_from = str(last) if cfg.resume and last.is_file() else None
    if resume_from:
        read_checkpoint(resume_from)
        log.info("stage %s: resuming from %s", stage, resume_from)
    optim = cfg.optim
    module = ClassificationModule(
        model,
        ctx.data.num_classes,
        optimizer=instantiate(optim.optimizer),
        scheduler=instantiate(optim.scheduler) if optim.get("scheduler") else None,
        lr_scale=lr_scale,
        label_smoothing=float(optim.get("label_smoothing", 0.0)),
        model_info=ctx.model_info,
    )
    timer = StepTimer(warmup=int(cfg.report.timing_warmup))
    sync = SyncRankState()
    # One file, rewritten after every epoch: what a rerun resumes from after an interruption.
    checkpoint = ModelCheckpoint(dirpath=stage_dir, filename="last", save_top_k=1, enable_version_counter=False)
    loggers = [
        instantiate(lcfg, save_dir=str(ctx.run_dir / "logs"), version=stage) for lcfg in (cfg.logger or {}).values()
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        max_epochs=max_epochs,
        callbacks=[checkpoint, timer, sync, NaNLossGuard(stage), *callbacks],
        logger=loggers or False,
        default_root_dir=str(stage_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=ctx.data, ckpt_path=resume_from)
    return {
        "median_step_s": timer.median_s,
        "train_wall_s": time.perf_counter() - start,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "resumed_from": resume_from,
        "world_size": sync.world_size,
        "ranks_consistent": sync.consistent,
    }


def run_float_stage(ctx: RunContext, model: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Train (or load from ``float_ckpt`` / a completed stage) and evaluate the float model."""
    float_ckpt = ctx.cfg.get("float_ckpt")
    if float_ckpt:
        load_float_weights(model, float_ckpt, ctx.model_info)
        ctx.state.update("float", status="done", source=str(float_ckpt), median_step_s=None, metrics=None)
        log.info("stage float: weights from %s", float_ckpt)
    elif ctx.state.done("float"):
        load_module_weights(model, ctx.run_dir / "float" / "last.ckpt")
        log.info("stage float: complete, loaded float/last.ckpt")
    else:
        ctx.state.update("float", status="running")
        timing = _fit(ctx, "float", model, int(ctx.cfg.trainer.max_epochs), 1.0, [])
        ctx.state.update("float", status="done", **timing)
    return model.cpu(), _evaluate(ctx, "float", model)


def _frozen_fake_quant(model: nn.Module) -> nn.Module:
    """Fake-quant on, activation grids fixed, eval mode: what ``convert`` turns into int8."""
    enable_fake_quant(model)
    freeze_activation_observers(model)
    return model.eval()


def run_calib_stage(ctx: RunContext, float_model: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Calibrate a fake-quant copy of the float model on training batches (eval transforms, eval mode)."""
    plan = ctx.plan
    fake_quant = prepare_calibration(
        float_model,
        plan.target,
        activation_observer=plan.calib_observer,
        high_precision_output=plan.high_precision_output,
    )
    path = ctx.run_dir / "calib" / "calibrated.pt"
    if ctx.state.done("calib") and path.is_file():
        fake_quant.load_state_dict(torch.load(path, map_location="cpu"))
        log.info("stage calib: complete, loaded %s", path)
    else:
        start = time.perf_counter()
        calibrate(fake_quant, ctx.data.calib_dataloader(), num_batches=plan.calib_batches, progress=ctx.progress)
        if ctx.rank_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(fake_quant.state_dict(), path)
        ctx.state.update("calib", status="done", calib_wall_s=time.perf_counter() - start, batches=plan.calib_batches)
    return fake_quant, _evaluate(ctx, "calib", _frozen_fake_quant(copy.deepcopy(fake_quant)))


def run_qat_stage(ctx: RunContext, calibrated: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Fine-tune the calibrated fake-quant model (QAT) at ``lr_scale`` × the float learning rate."""
    plan = ctx.plan
    model = start_qat(calibrated, fixed_activation_scales=plan.activation_scales == "fixed", bn=plan.bn)
    callbacks: list[pl.Callback] = []
    if plan.freeze_bn_epoch is not None:
        callbacks.append(FreezeBNStats(plan.freeze_bn_epoch))
    if plan.activation_scales == "update" and plan.freeze_observer_epoch is not None:
        callbacks.append(FreezeObservers(plan.freeze_observer_epoch))
    if ctx.state.done("qat"):
        load_module_weights(model, ctx.run_dir / "qat" / "last.ckpt")
        log.info("stage qat: complete, loaded qat/last.ckpt")
    else:
        ctx.state.update("qat", status="running")
        timing = _fit(ctx, "qat", model, plan.epochs, plan.lr_scale, callbacks)
        ctx.state.update("qat", status="done", **timing)
    model = _frozen_fake_quant(model.cpu())
    return model, _evaluate(ctx, "qat", model)


def run_int8_stage(
    ctx: RunContext, float_model: nn.Module, fake_quant: nn.Module, reference: str, fq_result: EvalResult | None
) -> None:
    """Convert to real int8, evaluate it, compare with the fake-quant model, benchmark and export (rank 0)."""
    if not ctx.rank_zero or ctx.state.done("int8"):
        return
    with quantized_kernels_allowed():
        _int8_stage(ctx, float_model, fake_quant, reference, fq_result)


def _latency(ctx: RunContext, float_model: nn.Module, int8_model: nn.Module) -> dict[str, Any]:
    """Batch-1 latency of the BN-folded fp32 model and the int8 model, measured side by side."""
    rc = ctx.cfg.report
    runs, warmup, rounds, threads = (
        int(rc.latency_runs),
        int(rc.latency_warmup),
        int(rc.latency_rounds),
        rc.get("latency_threads"),
    )
    clock = str(rc.get("latency_clock", "wall"))
    models = {"fp32_bn_folded": fold_batchnorm(float_model), "int8": int8_model}
    example = ctx.data.example_input(1)
    latency: dict[str, Any] = compare_latency(models, example, runs, warmup, threads, rounds, clock)
    latency.update(runs=runs, rounds=rounds, threads=threads or torch.get_num_threads(), clock=clock)
    return latency


def _int8_stage(
    ctx: RunContext, float_model: nn.Module, fake_quant: nn.Module, reference: str, fq_result: EvalResult | None
) -> None:
    """The int8 stage's work (rank 0, quantized kernels allowed)."""
    int8_model = convert(fake_quant)
    result = _evaluate(ctx, "int8", int8_model)
    assert result is not None and fq_result is not None
    exports = export_int8(
        int8_model,
        ctx.data.example_input(1),
        OmegaConf.to_container(ctx.cfg, resolve=True),
        ctx.run_dir / "int8",
        result.metrics(),
        ctx.data.class_names,
    )
    ctx.state.update(
        "int8",
        status="done",
        agreement={"reference": reference, "top1": prediction_agreement(result.predictions, fq_result.predictions)},
        size_bytes={"fp32": state_dict_bytes(float_model), "int8": state_dict_bytes(int8_model)},
        latency_s=_latency(ctx, float_model, int8_model),
        exports={**exports, "engine": get_qconfig(ctx.plan.target).engine},
    )


def run_pipeline(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run every stage of ``cfg.quant`` in ``run_dir`` and return the report (written by rank 0).

    ``deterministic=true`` makes Lightning switch torch to deterministic algorithms globally;
    the caller's setting is restored afterwards.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        return _run(cfg, Path(run_dir))
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    plan = build_plan(cfg.quant)
    data = build_data(cfg.data)
    model = build_model(cfg.model)
    data.setup()
    model_info = {"name": cfg.model.get("name", type(model).__name__), "num_classes": data.num_classes}
    _check_float_model(model, data.example_input(), str(model_info["name"]))
    rank_zero = rank_zero_only.rank == 0
    identity = {**model_info, "data": data.name, "mode": plan.mode}
    state = StageState(run_dir, resume=bool(cfg.resume), writer=rank_zero, identity=identity)
    ctx = RunContext(cfg, run_dir, plan, data, state, model_info, rank_zero)

    float_model, _ = run_float_stage(ctx, model)
    fake_quant, fq_result, reference = None, None, ""
    if "calib" in plan.stages:
        fake_quant, fq_result = run_calib_stage(ctx, float_model)
        reference = "calib"
        if "qat" not in plan.stages:
            fake_quant = _frozen_fake_quant(fake_quant)
    if "qat" in plan.stages:
        fake_quant, fq_result = run_qat_stage(ctx, fake_quant)
        reference = "qat"
    if "int8" in plan.stages:
        run_int8_stage(ctx, float_model, fake_quant, reference, fq_result)

    report = build_report(identity, data.describe(), plan.to_dict(), state.records)
    if rank_zero:
        paths = write_report(report, run_dir)
        log.info("report: %s", paths["md"])
    return report
