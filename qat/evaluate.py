"""Re-evaluate an exported int8 model: ``python -m qat.evaluate <run folder | int8 folder> [data.key=value ...]``.

The int8 model is rebuilt from ``int8_state.pt`` (or loaded from ``model_int8.ts`` with
``--torchscript``) and evaluated on the held-out split of the run's own data config, so it
reproduces the report's int8 top-1; ``data.*`` overrides point it at other data (e.g. ``data.root``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qat.pipeline.errors import ConfigError, PipelineError
from qat.pipeline.evaluation import evaluate_model
from qat.pipeline.export import TORCHSCRIPT, find_int8_state, load_int8_state, rebuild_int8

__all__ = ["evaluate_export", "main"]


def evaluate_export(path: str, overrides: Sequence[str] = (), torchscript: bool = False) -> dict[str, Any]:
    """Evaluate the int8 export under ``path``; returns its metrics and the run's recorded int8 metrics."""
    payload = load_int8_state(path)
    bad = [o for o in overrides if not o.startswith("data.")]
    if bad:
        raise ConfigError(f"only data.* overrides apply to an exported model, got {bad}")
    cfg = OmegaConf.merge(OmegaConf.create(payload["config"]), OmegaConf.from_dotlist(list(overrides)))
    data = instantiate(cfg.data)
    if torchscript:
        torch.backends.quantized.engine = payload["engine"]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated")
            model = torch.jit.load(str(find_int8_state(path).parent / TORCHSCRIPT), map_location="cpu")
    else:
        model = rebuild_int8(payload)
    result = evaluate_model(model, data.val_dataloader(), data.num_classes, progress="eval int8")
    return {"metrics": result.metrics(), "recorded": payload["metrics"], "predictions": result.predictions}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qat.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run folder, its int8/ folder, or int8_state.pt")
    parser.add_argument("overrides", nargs="*", help="data.key=value overrides (e.g. data.root=/data/cifar10)")
    parser.add_argument("--torchscript", action="store_true", help=f"evaluate {TORCHSCRIPT} instead of the rebuild")
    args = parser.parse_args(argv)
    try:
        out = evaluate_export(args.path, args.overrides, args.torchscript)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    m, rec = out["metrics"], out["recorded"]
    print(
        f"int8 top-1 {100 * m['top1']:.2f} %  top-5 {100 * m['top5']:.2f} %  loss {m['loss']:.4f}  ({m['samples']} images)"
    )
    same = m["top1"] == rec["top1"] and m["samples"] == rec["samples"]
    verdict = "reproduces" if same else "differs from"
    print(f"{verdict} the run's recorded int8 top-1 {100 * rec['top1']:.2f} % ({rec['samples']} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
