"""Loading float weights from ``float_ckpt`` (a Lightning checkpoint or a plain state dict), with clear errors.

Every file is read with ``torch.load(weights_only=True)``: tensors, containers and plain values
only, so a crafted pickle that would run code when loaded is refused instead.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qat.pipeline.errors import CheckpointError

__all__ = [
    "fresh_start_fix",
    "load_float_weights",
    "load_module_weights",
    "mismatch_summary",
    "module_state_dict",
    "read_checkpoint",
    "safe_load",
]

_MODULE_PREFIX = "model."
_FLOAT_FIX = "use the float/last.ckpt of a finished run"
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def safe_load(path: str | Path, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU; an unreadable or code-carrying file is a :class:`CheckpointError`.

    ``fix`` finishes the message: what the user should pass or do instead.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _UNSAFE_GLOBAL.search(str(err))
        if unsafe is None:
            reason = " ".join(str(err).split("WeightsUnpickler error:")[-1].split()[:8])
            raise CheckpointError(
                f"{path} cannot be read ({reason}); it is corrupt or not a PyTorch file -- {fix}"
            ) from None
        raise CheckpointError(
            f"{path} was refused: loading it would call {unsafe.group(1)}, i.e. run code, which no file written by "
            f"qat needs (only tensors and plain values are loaded); it was crafted or written by other code -- {fix}"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(
            f"{path} cannot be read ({type(err).__name__}: {err}); it is corrupt or not a PyTorch file -- {fix}"
        ) from err


def fresh_start_fix(path: str | Path) -> str:
    """The fix for a bad file inside a run folder: remove it, or start the run over."""
    return f"delete {path}, or start fresh with resume=false or another hydra.run.dir"


def read_checkpoint(path: str | Path, fix: str = _FLOAT_FIX) -> dict[str, Any]:
    """A checkpoint's dict (loaded with :func:`safe_load`); a missing, unreadable or non-dict file is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass e.g. <earlier run>/float/last.ckpt")
    payload = safe_load(path, fix)
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(payload).__name__}, not a state dict or checkpoint -- {fix}"
        )
    return payload


def module_state_dict(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The wrapped model's weights from a Lightning checkpoint (``model.`` prefix dropped) or a plain state dict."""
    state = payload.get("state_dict", payload)
    if any(k.startswith(_MODULE_PREFIX) for k in state):
        state = {k[len(_MODULE_PREFIX) :]: v for k, v in state.items() if k.startswith(_MODULE_PREFIX)}
    return state


def _listed(keys: list[str], shown: int = 3) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def mismatch_summary(model: nn.Module, state: dict[str, Any]) -> str:
    """Which keys differ between ``model`` and ``state``, a few of each and the counts (never the full list)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != v.shape
    ]
    parts = [
        f"{len(missing)} missing keys ({_listed(missing)})" if missing else "",
        f"{len(unexpected)} unexpected keys ({_listed(unexpected)})" if unexpected else "",
        f"{len(shapes)} shape mismatches ({_listed(shapes, 2)})" if shapes else "",
    ]
    return "; ".join(p for p in parts if p) or "the state dict does not fit"


def load_float_weights(model: nn.Module, path: str | Path, model_info: dict[str, Any]) -> None:
    """Load float weights into ``model``; a checkpoint of another model or a fake-quant one is refused."""
    payload = read_checkpoint(path)
    saved = payload.get("qat_model_info")
    if saved and saved != model_info:
        raise CheckpointError(
            f"float_ckpt {path} was saved from {saved}, but this run builds {model_info}; "
            f"use model={saved.get('name')} (and the matching data) or a checkpoint of {model_info.get('name')}"
        )
    state = module_state_dict(payload)
    if any("fake_quant" in k or "activation_post_process" in k for k in state):
        raise CheckpointError(
            f"float_ckpt {path} is a fake-quant (calibration/QAT) checkpoint; pass the float stage's float/last.ckpt"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(
            f"float_ckpt {path} does not fit model {model_info.get('name')!r} ({mismatch_summary(model, state)}); "
            "it comes from another model or class count -- pass a checkpoint of this model"
        ) from None


def load_module_weights(model: nn.Module, path: str | Path) -> None:
    """Load a stage's own ``last.ckpt`` back into the model it was trained from (resume / skip)."""
    payload = read_checkpoint(path, fix=fresh_start_fix(path))
    state = module_state_dict(payload)
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(
            f"{path} does not match this run's model ({mismatch_summary(model, state)}); "
            "start fresh with resume=false or another hydra.run.dir"
        ) from None
