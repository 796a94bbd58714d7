"""Export of the real int8 model, and rebuilding it from the exported state.

``int8/model_int8.ts`` is a traced, frozen TorchScript module: ``torch.jit.load`` runs it with plain
torch (no ``qat`` import). ``int8/int8_state.pt`` holds the int8 ``state_dict`` plus the
resolved run config; :func:`rebuild_int8` replays create_model → prepare → convert and loads it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_object, instantiate
from torch import Tensor, nn

from qat.pipeline.benchmark import torchscript
from qat.pipeline.checkpoints import safe_load
from qat.pipeline.errors import CheckpointError
from qat.pipeline.fallback import prepare_for_plan
from qat.pipeline.plan import QuantPlan
from qat.quant import convert, get_qconfig, portable_int8

__all__ = [
    "FORMAT",
    "INT8_STATE",
    "TORCHSCRIPT",
    "export_int8",
    "find_int8_state",
    "load_int8_state",
    "plan_from_config",
    "rebuild_int8",
]

FORMAT = "qat-int8/1"
TORCHSCRIPT = "model_int8.ts"
INT8_STATE = "int8_state.pt"


def _module_qparams(model: nn.Module, state_keys: set[str]) -> dict[str, tuple[float, int]]:
    """Output grids held as plain attributes (not in the state dict), e.g. lookup-table activations."""
    found = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        scale, zp = getattr(m, "scale", None), getattr(m, "zero_point", None)
        if isinstance(scale, float) and isinstance(zp, int) and f"{prefix}scale" not in state_keys:
            found[name] = (scale, zp)
    return found


def export_int8(
    int8_model: nn.Module,
    example_input: Tensor,
    config: dict[str, Any],
    out_dir: Path,
    metrics: dict[str, Any],
    class_names: list[str],
) -> dict[str, str]:
    """Write ``model_int8.ts`` and ``int8_state.pt`` under ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    int8_model = int8_model.eval()
    # portable_int8: stock torch ops only, so the file loads without qat's kernels. The frozen
    # trace is the form bench/latency.py times; qparams become constants of its graph.
    with portable_int8():
        traced = torchscript(int8_model, example_input)
    ts_path = out_dir / TORCHSCRIPT
    traced.save(str(ts_path))
    state = int8_model.state_dict()
    plan = plan_from_config(config)
    payload = {
        "format": FORMAT,
        "state_dict": state,
        "module_qparams": _module_qparams(int8_model, set(state)),
        "config": config,
        "engine": get_qconfig(plan.target).engine,
        "input_shape": list(example_input.shape[1:]),
        "class_names": class_names,
        "metrics": metrics,
    }
    state_path = out_dir / INT8_STATE
    torch.save(payload, state_path)
    return {"torchscript": str(ts_path), "state": str(state_path)}


def find_int8_state(path: str | Path) -> Path:
    """``int8_state.pt`` given itself, an ``int8/`` folder or a run folder."""
    path = Path(path).expanduser()
    for candidate in (path, path / INT8_STATE, path / "int8" / INT8_STATE):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no {INT8_STATE} at {path}: pass a run folder of a quant=calib/qat run, its int8/ folder or the file itself"
    )


def load_int8_state(path: str | Path) -> dict[str, Any]:
    """Read an exported ``int8_state.pt`` (``weights_only=True``: no code runs; checked for format)."""
    file = find_int8_state(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        payload = safe_load(file, fix="rerun the quant=calib/qat run that exports it")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not an int8 export of this pipeline (expected format {FORMAT})")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds no run config; rerun the quant=calib/qat run that exports it")
    for section, allowed in (("model", _is_model_factory), ("data", _is_data_module)):
        _check_targets(config.get(section), section, allowed, file)
    return payload


def _is_model_factory(obj: Any) -> bool:
    """An ``nn.Module`` class, or a model builder of ``qat.models`` (``create_model`` and the registered ones)."""
    builder = callable(obj) and str(getattr(obj, "__module__", "")).startswith("qat.models")
    return builder or _is_module_class(obj)


def _is_data_module(obj: Any) -> bool:
    from qat.pipeline.data import ClassificationDataModule

    return isinstance(obj, type) and issubclass(obj, ClassificationDataModule)


def _check_targets(node: Any, where: str, allowed: Callable[[Any], bool], file: Path) -> None:
    """Refuse an export whose config would make ``instantiate`` call anything but a model or data module.

    The config comes from the file, so its ``_target_`` strings are as untrusted as a pickle: only
    ``qat.models`` builders, ``nn.Module`` classes (nested ones too) and qat data modules may be
    built. A target that cannot be imported is left to ``instantiate``'s own error (nothing runs).
    """
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_targets(item, f"{where}[{i}]", _is_module_class, file)
        return
    if not isinstance(node, dict):
        return
    target = node.get("_target_")
    if target is not None:
        try:
            obj = get_object(str(target))
        except Exception:  # noqa: BLE001 - unimportable: instantiate reports it, and nothing was called
            obj = None
        if obj is not None and not allowed(obj):
            raise CheckpointError(
                f"{file} was refused: its config builds {where} with {target!r}, which is neither a model class "
                "nor a qat data module, so loading it would run other code; it was crafted or edited -- "
                "rerun the quant=calib/qat run that exports it"
            )
    for key, value in node.items():
        if key != "_target_":
            _check_targets(value, f"{where}.{key}", _is_module_class, file)


def _is_module_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def plan_from_config(config: dict[str, Any]) -> QuantPlan:
    """The :class:`QuantPlan` of a resolved run config."""
    return QuantPlan(**{k: v for k, v in config["quant"].items() if k != "_target_"})


def rebuild_int8(payload: dict[str, Any]) -> nn.Module:
    """The int8 model from an export: build the float model, prepare, convert, load the int8 state."""
    config = payload["config"]
    plan = plan_from_config(config)
    model = instantiate(config["model"])
    fake_quant = prepare_for_plan(model, plan)
    with torch.no_grad():
        fake_quant(torch.zeros(1, *payload["input_shape"]))
    int8_model = convert(fake_quant)
    for name, (scale, zero_point) in payload["module_qparams"].items():
        module = int8_model.get_submodule(name) if name else int8_model
        module.scale, module.zero_point = scale, zero_point
    # after the grids: fused layers (SE gates) re-read their parts when the state is loaded
    int8_model.load_state_dict(payload["state_dict"])
    return int8_model.eval()
