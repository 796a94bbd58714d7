"""Loading float weights from ``float_ckpt`` (a Lightning checkpoint or a plain state dict), with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qat.pipeline.errors import CheckpointError

__all__ = ["load_float_weights", "load_module_weights", "module_state_dict", "read_checkpoint"]

_MODULE_PREFIX = "model."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load`` a checkpoint file, turning a missing or unreadable file into :class:`CheckpointError`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass e.g. <earlier run>/float/last.ckpt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); it is corrupt or not a PyTorch "
            "checkpoint -- use the float/last.ckpt of a finished run"
        ) from err
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict or checkpoint")
    return payload


def module_state_dict(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The wrapped model's weights from a Lightning checkpoint (``model.`` prefix dropped) or a plain state dict."""
    state = payload.get("state_dict", payload)
    if any(k.startswith(_MODULE_PREFIX) for k in state):
        state = {k[len(_MODULE_PREFIX) :]: v for k, v in state.items() if k.startswith(_MODULE_PREFIX)}
    return state


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
    except RuntimeError as err:
        first = str(err).splitlines()[0:4]
        raise CheckpointError(
            f"float_ckpt {path} does not fit model {model_info.get('name')!r} ({' '.join(first)}); "
            "it comes from another model or class count -- pass a checkpoint of this model"
        ) from err


def load_module_weights(model: nn.Module, path: str | Path) -> None:
    """Load a stage's own ``last.ckpt`` back into the model it was trained from (resume / skip)."""
    try:
        model.load_state_dict(module_state_dict(read_checkpoint(path)))
    except RuntimeError as err:
        raise CheckpointError(
            f"{path} does not match this run's model ({str(err).splitlines()[0]}); "
            "start fresh with resume=false or another hydra.run.dir"
        ) from err
