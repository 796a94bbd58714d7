"""Re-evaluate an exported int8 model: ``python -m qat.evaluate <run folder | int8 folder> [data.key=value ...]``.

The int8 model is rebuilt from ``int8_state.pt`` (or loaded from ``model_int8.ts`` with
``--torchscript``, or run in ONNX Runtime from ``model_int8.onnx`` with ``--onnx``) and evaluated on the held-out split of the run's own data config, so it
reproduces the report's int8 top-1; ``data.*`` overrides point it at other data (e.g. ``data.root``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qat.pipeline.errors import CheckpointError, ConfigError, PipelineError, one_line
from qat.pipeline.evaluation import evaluate_model
from qat.pipeline.export import TORCHSCRIPT, find_int8_state, load_int8_state, rebuild_int8
from qat.pipeline.onnx_runtime import ONNX_INT8, OrtModel, load_ort_session, recorded_onnx_metrics

__all__ = ["evaluate_export", "main"]


def _rebuild(payload: dict[str, Any]) -> torch.nn.Module:
    """:func:`rebuild_int8`, with a model class that cannot be imported here reported in one message."""
    try:
        return rebuild_int8(payload)
    except InstantiationException as err:
        target = payload["config"].get("model", {}).get("_target_")
        if "Error locating target" not in str(err):
            raise
        raise ConfigError(
            f"the run's model class {target!r} cannot be imported here ({str(err).splitlines()[0]}); run from "
            "the folder that holds its module, add that folder to PYTHONPATH, or `pip install -e` your package"
        ) from None


def _load_torchscript(file: Path) -> torch.nn.Module:
    """``model_int8.ts``, with a missing or unreadable file reported in one message."""
    if not file.is_file():
        raise CheckpointError(f"no {TORCHSCRIPT} at {file.parent}: rerun the quant=calib/qat run that exports it")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            return torch.jit.load(str(file), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"{file} is not a readable TorchScript file ({str(err).strip().splitlines()[0][:160]}); rerun the "
            "quant=calib/qat run that exports it"
        ) from None


def evaluate_export(
    path: str, overrides: Sequence[str] = (), torchscript: bool = False, onnx: bool = False
) -> dict[str, Any]:
    """Evaluate the int8 export under ``path``; returns its metrics and the run's recorded metrics for it
    (``recorded_label`` says which: qat's int8 model, or ONNX Runtime's with ``onnx``)."""
    payload = load_int8_state(path)
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* overrides apply to an exported model, got {bad}")
    cfg = OmegaConf.merge(OmegaConf.create(payload["config"]), OmegaConf.from_dotlist(list(overrides)))
    data = instantiate(cfg.data)
    int8_dir = find_int8_state(path).parent
    recorded, label = payload["metrics"], "int8"
    if onnx:
        model = OrtModel(load_ort_session(int8_dir / ONNX_INT8, cfg.get("report", {}).get("latency_threads")))
        recorded, label = recorded_onnx_metrics(int8_dir.parent), "ONNX Runtime int8"
    elif torchscript:
        torch.backends.quantized.engine = payload["engine"]
        model = _load_torchscript(int8_dir / TORCHSCRIPT)
    else:
        model = _rebuild(payload)
    result = evaluate_model(model, data.val_dataloader(), data.num_classes, progress="eval int8")
    return {
        "metrics": result.metrics(),
        "recorded": recorded,
        "recorded_label": label,
        "predictions": result.predictions,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run folder, its int8/ folder, or int8_state.pt")
    parser.add_argument("overrides", nargs="*", help="data.key=value overrides (e.g. data.root=/data/cifar10)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--torchscript", action="store_true", help=f"evaluate {TORCHSCRIPT} instead of the rebuild")
    which.add_argument("--onnx", action="store_true", help=f"evaluate {ONNX_INT8} in ONNX Runtime (CPU)")
    args = parser.parse_args(argv)
    try:
        out = evaluate_export(args.path, args.overrides, args.torchscript, args.onnx)
    except PipelineError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    m, rec, label = out["metrics"], out["recorded"], out["recorded_label"]
    print(
        f"int8 top-1 {100 * m['top1']:.2f} %  top-5 {100 * m['top5']:.2f} %  loss {m['loss']:.4f}  ({m['samples']} images)"
    )
    if rec is None:
        print(f"the run recorded no {label} top-1 (a run from before ONNX export): nothing to compare")
        return 0
    same = m["top1"] == rec["top1"] and m["samples"] == rec["samples"]
    verdict = "reproduces" if same else "differs from"
    print(f"{verdict} the run's recorded {label} top-1 {100 * rec['top1']:.2f} % ({rec['samples']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
