"""The stage runner: float → calibration → QAT → int8, each stage evaluated on the same held-out split.

Every stage writes into the run folder (``float/``, ``calib/``, ``qat/``, ``int8/``) and records
itself in ``stages.json``: a complete stage is skipped on a rerun in the same folder, an
interrupted training stage resumes from its ``last.ckpt``. Under DDP every rank trains and
calibrates; only rank 0 evaluates, exports and writes the report.
"""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch import nn

from qat.models import list_models
from qat.pipeline.benchmark import compare_latency, fold_batchnorm, model_complexity, state_dict_bytes
from qat.pipeline.callbacks import (
    FreezeBNStats,
    FreezeObservers,
    NaNLossGuard,
    StepTimer,
    SyncRankState,
    TrainTop1,
)
from qat.pipeline.checkpoints import (
    fresh_start_fix,
    load_float_weights,
    load_module_weights,
    read_checkpoint,
    safe_load,
)
from qat.pipeline.config import CONF_DIR, validate_config
from qat.pipeline.data import ClassificationDataModule
from qat.pipeline.errors import (
    ConfigError,
    ModelRejectedError,
    PipelineError,
    StageCollapseError,
    UnknownModelError,
)
from qat.pipeline.evaluation import EvalResult, evaluate_model, prediction_agreement, quantized_kernels_allowed
from qat.pipeline.export import export_int8
from qat.pipeline.fallback import apply_fallback, mixed_precision_record, prepare_for_plan
from qat.pipeline.health import HEALTH_MODES, collapse_message
from qat.pipeline.module import ClassificationModule
from qat.pipeline.optim import AUTO_LR, find_lr, resolve_optim_defaults, set_bn_momentum
from qat.pipeline.plan import QuantPlan
from qat.pipeline.precise_bn import recompute_bn_stats
from qat.pipeline.report import build_report, write_report
from qat.pipeline.state import StageState, stage_inputs
from qat.quant import (
    calibrate,
    check_model,
    convert,
    enable_fake_quant,
    freeze_activation_observers,
    get_qconfig,
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


_CREATE_MODEL = "qat.models.create_model"


def _custom_model_class(cfg: DictConfig) -> Any:
    """The class (or factory) a custom ``model._target_`` names, or a message on how to make it importable."""
    target = str(cfg.get("_target_"))
    module_name, _, attr = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix, reported in one line
        reason = str(err).splitlines()[0] if str(err) else ""
        raise ConfigError(
            f"model._target_={target!r} cannot be imported ({type(err).__name__}: {reason}). Make its module "
            "importable where you run this (run from the folder holding it, add that folder to PYTHONPATH, or "
            "`pip install -e` your package), or fix the dotted name (module.Class)"
        ) from None


def _group_defaults(cfg: DictConfig) -> set[str]:
    """Keys the model group's file set (``conf/model/<name>.yaml``: name, stem, pretrained...), not the user."""
    path = CONF_DIR / "model" / f"{cfg.get('name')}.yaml"
    keys = set(OmegaConf.load(path)) if path.is_file() else {"name", "stem", "pretrained"}
    return keys - {"_target_", "num_classes"}


def _drop_unaccepted(cfg: DictConfig, factory: Any) -> None:
    """Remove the model group's defaults (``name``, ``stem``...) that a custom class does not take.

    ``name`` is kept only as an explicit parameter (a ``**kwargs`` catch-all would swallow the default
    model's name, which would then be reported as the model); the others also when ``**kwargs``
    takes them. Keys the user added (``+model.width=32``) are left for the class to accept or refuse.
    The config is edited in place so the int8 export rebuilds the model with the same arguments.
    """
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    with open_dict(cfg):
        for key in sorted(_group_defaults(cfg)):
            if key in cfg and key not in params and (key == "name" or not var_kw):
                del cfg[key]


def model_name(cfg: DictConfig, model: nn.Module) -> str:
    """The registered name, or for a custom ``model._target_`` the class actually built (module.Class)."""
    if cfg.get("_target_") == _CREATE_MODEL:
        return str(cfg.get("name"))
    return f"{type(model).__module__}.{type(model).__qualname__}"


def build_model(cfg: DictConfig) -> nn.Module:
    """Instantiate the model config; an unregistered name lists the closest registered ones.

    A custom ``model._target_=your.module.Net`` gets ``num_classes`` (and ``name``/``stem`` only if it
    takes them); a module that cannot be imported is one message saying how to make it importable.
    """
    name = cfg.get("name")
    if cfg.get("_target_") == _CREATE_MODEL:
        if name not in list_models():
            raise UnknownModelError(str(name), list_models())
        return _instantiate(cfg)
    _drop_unaccepted(cfg, _custom_model_class(cfg))
    try:
        return _instantiate(cfg)
    except InstantiationException as err:
        cause = err.__cause__ or err
        keys = sorted(str(k) for k in cfg if not str(k).startswith("_"))
        raise ConfigError(
            f"model._target_={cfg.get('_target_')!r} could not be built with {keys} ({type(cause).__name__}: "
            f"{str(cause).splitlines()[0]}); make its __init__ accept these keys, or drop extra ones with ~model.<key>"
        ) from None


def build_data(cfg: DictConfig) -> ClassificationDataModule:
    data = _instantiate(cfg)
    if not isinstance(data, ClassificationDataModule):
        raise ConfigError(f"the data config must instantiate a ClassificationDataModule, got {type(data).__name__}")
    return data


def _runs_at(model: nn.Module, size: int, channels: int) -> bool:
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, size, size))
    except RuntimeError:
        return False
    return True


def _min_input_size(model: nn.Module, example: torch.Tensor, limit: int = 1024) -> int | None:
    """The smallest square input size the model runs at (dry forwards in eval mode), or None."""
    model = copy.deepcopy(model).eval()
    channels, low, high = example.shape[1], example.shape[-1], example.shape[-1]
    while not _runs_at(model, high, channels):
        low, high = high, high * 2
        if high > limit:
            return None
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if _runs_at(model, mid, channels) else (mid, high)
    return high


def _check_float_model(model: nn.Module, example: torch.Tensor, name: str) -> None:
    """``check_model`` before any training: a model that would not quantize correctly is refused.

    Its forward is the dry run that finds an input size the model cannot take (a kernel larger
    than the feature map): that is refused with the smallest size that works.
    """
    try:
        report = check_model(model, example)
    except RuntimeError as err:
        smallest = _min_input_size(model, example)
        if smallest is None:
            raise
        size = example.shape[-1]
        raise ConfigError(
            f"model {name!r} cannot take {size}x{size} inputs ({str(err).splitlines()[0]}); the smallest input "
            f"it takes is {smallest}x{smallest}: set data.image_size={smallest} or more (or a data.stem that "
            "downsamples less, e.g. data.stem=cifar)"
        ) from None
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
        # weights_only=True here and in Lightning's own load below: a crafted last.ckpt runs no code
        read_checkpoint(resume_from, fix=fresh_start_fix(resume_from))
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
    ctx.data.epoch_salt = stage  # each stage's epochs get their own order and augmentations
    start = time.perf_counter()
    trainer.fit(module, datamodule=ctx.data, ckpt_path=resume_from, weights_only=True)
    return {
        "median_step_s": timer.median_s,
        "train_wall_s": time.perf_counter() - start,
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "resumed_from": resume_from,
        "world_size": sync.world_size,
        "ranks_consistent": sync.consistent,
    }


def _precise_bn_batches(cfg: DictConfig) -> int:
    """``precise_bn_batches`` from the config, checked (0 turns precise BN off)."""
    value = cfg.get("precise_bn_batches", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"precise_bn_batches={value!r} must be a whole number >= 0 (training batches over which BN "
            "statistics are recomputed; 0 turns it off): e.g. precise_bn_batches=64"
        )
    return value


def _precise_bn(ctx: RunContext, model: nn.Module) -> None:
    """Recompute the float model's BN running statistics over training batches (eval transforms).

    Done once, on the float model, before it is evaluated: calibration and QAT start from copies
    of it, so they (and QAT's BN fold) use these statistics, and no observer sees the extra batches.
    """
    configured = _precise_bn_batches(ctx.cfg)
    run = recompute_bn_stats(model, ctx.data.calib_dataloader(), configured)
    ctx.state.update("float", precise_bn={"configured_batches": configured, "batches": run})
    if run:
        log.info("precise BN: BN statistics recomputed over %d training batches", run)


def _health_check(ctx: RunContext, stage: str, trained_by: str) -> None:
    """Warn (or stop, ``health_check=error``) when the stage's held-out top-1 collapsed to chance."""
    mode = str(ctx.cfg.get("health_check", "warn"))
    if mode not in HEALTH_MODES:
        raise ConfigError(f"health_check={mode!r} is unknown; use one of {list(HEALTH_MODES)}")
    metrics = ctx.state.get(stage).get("metrics")
    if mode == "off" or not ctx.rank_zero or not metrics:
        return
    message = collapse_message(
        stage,
        metrics["top1"],
        ctx.state.get(trained_by).get("train_top1"),
        ctx.data.num_classes,
        int(ctx.state.get("float").get("precise_bn", {}).get("batches", 0)),
        (ctx.state.get("float").get("metrics") or {}).get("top1"),
    )
    ctx.state.update(stage, health_warning=message)
    if message is None:
        return
    if mode == "error":
        raise StageCollapseError(f"{message} (health_check=warn only warns)")
    log.warning("HEALTH CHECK: %s", message)


def _find_lr(ctx: RunContext, model: nn.Module) -> dict[str, Any]:
    """``optim.optimizer.lr=auto``: Lightning's range test on the float model (weights restored after)."""
    optim = ctx.cfg.optim
    module = ClassificationModule(
        model,
        ctx.data.num_classes,
        optimizer=instantiate(optim.optimizer, lr=1e-6),
        label_smoothing=float(optim.get("label_smoothing") or 0.0),
        model_info=ctx.model_info,
    )
    trainer = functools.partial(
        instantiate, ctx.cfg.trainer, max_epochs=1, devices=1, strategy="auto", logger=False, callbacks=[],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    ctx.data.epoch_salt = "lr_find"
    found = find_lr(module, ctx.data, trainer, ctx.run_dir / "lr_find")
    log.info("lr=auto: learning-rate finder picked %.3g (plot: %s)", found["value"], found["plot"])
    return found


def _settle_optim(ctx: RunContext, model: nn.Module, record: dict[str, Any]) -> None:
    """Record the optim values used (model defaults, config, finder); ``lr=auto`` becomes the finder's pick.

    A rerun in the same folder reuses the pick recorded there instead of searching again.
    """
    if ctx.cfg.optim.optimizer.get("lr") == AUTO_LR:
        found = (ctx.state.get("float").get("optim") or {}).get("lr") or {}
        if found.get("value") is None:
            found = _find_lr(ctx, model)
        ctx.cfg.optim.optimizer.lr = found["value"]
        record["lr"] = found
    ctx.state.update("float", optim=record)


def run_float_stage(ctx: RunContext, model: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Train (or load from ``float_ckpt`` / a completed stage), recompute BN statistics, evaluate."""
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
        top1 = TrainTop1()
        timing = _fit(ctx, "float", model, int(ctx.cfg.trainer.max_epochs), 1.0, [top1])
        ctx.state.update("float", status="done", train_top1=top1.top1, **timing)
    model = model.cpu()
    _precise_bn(ctx, model)
    result = _evaluate(ctx, "float", model)
    _health_check(ctx, "float", "float")
    return model, result


def _frozen_fake_quant(model: nn.Module) -> nn.Module:
    """Fake-quant on, activation grids fixed, eval mode: what ``convert`` turns into int8."""
    enable_fake_quant(model)
    freeze_activation_observers(model)
    return model.eval()


def run_calib_stage(ctx: RunContext, float_model: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Calibrate a fake-quant copy of the float model on training batches (eval transforms, eval mode)."""
    if ctx.plan.max_drop is not None:
        ctx.plan = apply_fallback(ctx, float_model)
    plan = ctx.plan
    fake_quant = prepare_for_plan(float_model, plan)
    path = ctx.run_dir / "calib" / "calibrated.pt"
    if ctx.state.done("calib") and path.is_file():
        fake_quant.load_state_dict(safe_load(path, fix=fresh_start_fix(path)))
        log.info("stage calib: complete, loaded %s", path)
    else:
        start = time.perf_counter()
        loader = ctx.data.calib_dataloader()
        calibrate(fake_quant, loader, num_batches=plan.calib_batches, progress=ctx.progress)
        if ctx.rank_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(fake_quant.state_dict(), path)
        ctx.state.update(
            "calib",
            status="done",
            calib_wall_s=time.perf_counter() - start,
            batches=min(plan.calib_batches, len(loader)),
            configured_batches=plan.calib_batches,
        )
    result = _evaluate(ctx, "calib", _frozen_fake_quant(copy.deepcopy(fake_quant)))
    _health_check(ctx, "calib", "float")
    return fake_quant, result


def run_qat_stage(ctx: RunContext, calibrated: nn.Module) -> tuple[nn.Module, EvalResult | None]:
    """Fine-tune the calibrated fake-quant model (QAT) at ``lr_scale`` × the float learning rate."""
    plan = ctx.plan
    model = start_qat(
        calibrated,
        fixed_activation_scales=plan.activation_scales == "fixed",
        bn=plan.bn,
        learn_activation_scales=plan.activation_scales == "learn",
        learn_weight_scales=plan.weight_scales == "learn",
    )
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
        top1 = TrainTop1()
        timing = _fit(ctx, "qat", model, plan.epochs, plan.lr_scale, [*callbacks, top1])
        ctx.state.update("qat", status="done", train_top1=top1.top1, **timing)
    model = _frozen_fake_quant(model.cpu())
    result = _evaluate(ctx, "qat", model)
    _health_check(ctx, "qat", "qat")
    return model, result


def run_int8_stage(
    ctx: RunContext, float_model: nn.Module, fake_quant: nn.Module, reference: str, fq_result: EvalResult | None
) -> None:
    """Convert to real int8, evaluate it, compare with the fake-quant model, benchmark and export (rank 0)."""
    if not ctx.rank_zero or ctx.state.done("int8"):
        return
    with quantized_kernels_allowed():
        _int8_stage(ctx, float_model, fake_quant, reference, fq_result)
    _health_check(ctx, "int8", "qat" if "qat" in ctx.plan.stages else "float")


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
    from qat.pipeline.onnx_runtime import export_and_check_onnx

    int8_model = convert(fake_quant)
    result = _evaluate(ctx, "int8", int8_model)
    assert result is not None and fq_result is not None
    config = OmegaConf.to_container(ctx.cfg, resolve=True)
    config["model"].pop("pretrained", None)  # rebuilding the int8 model needs no float weights
    exports = export_int8(
        int8_model,
        ctx.data.example_input(1),
        config,
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
        mixed_precision=mixed_precision_record(ctx, float_model, int8_model),
        onnx=export_and_check_onnx(
            float_model,
            fake_quant,
            result,
            ctx.data,
            ctx.run_dir / "int8",
            {"model": ctx.model_info["name"], "target": ctx.plan.target, "class_names": ctx.data.class_names},
            ctx.cfg.report,
        ),
    )


def run_pipeline(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Run every stage of ``cfg.quant`` in ``run_dir`` and return the report (written by rank 0).

    ``deterministic=true`` makes Lightning switch torch to deterministic algorithms globally;
    the caller's setting is restored afterwards.
    """
    validate_config(cfg)
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
    model_info = {"name": model_name(cfg.model, model), "num_classes": data.num_classes}
    _check_float_model(model, data.example_input(), str(model_info["name"]))
    complexity = model_complexity(model, data.example_input())
    rank_zero = rank_zero_only.rank == 0
    identity = {**model_info, "data": data.name, "mode": plan.mode}
    optim_record = resolve_optim_defaults(cfg.optim, str(model_info["name"]), data.image_size, data.batch_size)
    set_bn_momentum(model, cfg.optim.get("bn_momentum"))
    inputs = stage_inputs(OmegaConf.to_container(cfg, resolve=True), plan.stages)
    keep = [cfg.float_ckpt] if cfg.get("float_ckpt") else []
    state = StageState(run_dir, resume=bool(cfg.resume), writer=rank_zero, identity=identity, inputs=inputs, keep=keep)
    ctx = RunContext(cfg, run_dir, plan, data, state, model_info, rank_zero)

    _settle_optim(ctx, model, optim_record)
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

    report = build_report(identity, data.describe(), plan.to_dict(), state.records, complexity)
    if rank_zero:
        paths = write_report(report, run_dir)
        log.info("report: %s", paths["md"])
    return report
