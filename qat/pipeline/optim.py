"""Optimisation settings: per-step schedules, the model's training defaults, the learning-rate finder.

Schedules are built per stage (the total step count is only known at fit time). ``optim`` values
left ``null`` take the model's registered defaults (:func:`qat.models.registry.training_defaults`);
``optim.optimizer.lr=auto`` runs Lightning's learning-rate range test before float training.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from qat.models.registry import is_model, training_defaults
from qat.pipeline.errors import ConfigError

if TYPE_CHECKING:  # the schedules are also used without Lightning or OmegaConf (bench/lr_defaults.py)
    import pytorch_lightning as pl
    from omegaconf import DictConfig

__all__ = [
    "AUTO_LR",
    "find_lr",
    "resolve_optim_defaults",
    "set_bn_momentum",
    "steepest_descent",
    "unbiased_losses",
    "warmup_cosine",
]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.0, min_lr_ratio: float = 0.0
) -> LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio`` × lr."""
    total = max(1, int(total_steps))
    warmup = int(round(warmup_fraction * total))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


# optim keys that may be left null ("the model's default"): name -> (section or None, leaf)
DEFAULTED_KEYS: dict[str, tuple[str | None, str]] = {
    "lr": ("optimizer", "lr"),
    "weight_decay": ("optimizer", "weight_decay"),
    "warmup_fraction": ("scheduler", "warmup_fraction"),
    "label_smoothing": (None, "label_smoothing"),
    "bn_momentum": (None, "bn_momentum"),
}
AUTO_LR = "auto"


def resolve_optim_defaults(optim: DictConfig, model_name: str, image_size: int, batch_size: int) -> dict[str, Any]:
    """Fill every ``null`` of ``optim``'s defaulted keys from the model's registered training defaults.

    The learning rate default scales linearly with ``batch_size``; ``optim.optimizer.lr=auto``
    is left for the learning-rate finder. Returns, per key, the value used and where it came
    from (``model default``, ``config`` or ``auto``): what the report records.
    """
    defaults = training_defaults(model_name, image_size)
    values = {**defaults.to_dict(), "lr": defaults.scaled_lr(batch_size)}
    if not is_model(model_name):  # a user's own class keeps the BN momentum it was written with
        values["bn_momentum"] = None
    record: dict[str, Any] = {}
    for key, (section, leaf) in DEFAULTED_KEYS.items():
        node = optim.get(section) if section else optim
        if node is None or leaf not in node:
            continue
        current = node[leaf]
        if current is None:
            node[leaf] = values[key]
            record[key] = {"value": values[key], "source": "model default"}
        elif key == "lr" and current == AUTO_LR:
            record[key] = {"value": None, "source": AUTO_LR}
        elif isinstance(current, bool) or not isinstance(current, (int, float)):
            hint = " or auto (learning-rate finder)" if key == "lr" else ""
            raise ConfigError(
                f"optim {section + '.' if section else ''}{leaf}={current!r}: use a number, null (the model's default){hint}"
            )
        else:
            record[key] = {"value": float(current), "source": "config"}
    record["defaults_for"] = {"model": model_name, "image_size": image_size, "batch_size": batch_size}
    return record


def set_bn_momentum(model: nn.Module, momentum: float | None) -> int:
    """Set every BatchNorm's running-statistics momentum (``None`` keeps the modules' own); returns how many."""
    if momentum is None:
        return 0
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = float(momentum)
    return len(norms)


def unbiased_losses(smoothed: list[float], beta: float = 0.98) -> list[float]:
    """The range test's running-average losses with the right bias correction.

    Lightning divides the running average by ``1 - beta**(step + 1)`` after its step counter has
    already advanced, which makes the first losses of the curve too low (about half the first)
    and the curve rise at the small rates: its steepest-descent pick then lands in that rise.
    Record ``i`` was taken at step ``i + 1``, so it is rescaled to ``1 - beta**(i + 1)``.
    """
    return [float(v) * (1 - beta ** (i + 2)) / (1 - beta ** (i + 1)) for i, v in enumerate(smoothed)]


def steepest_descent(lrs: list[float], losses: list[float], skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """Lightning's suggestion rule: the rate where the loss falls fastest (finite part, ends skipped)."""
    import numpy as np

    points = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)][skip_begin : -skip_end or None]
    if len(points) < 3:
        return None
    gradient = np.gradient(np.array([loss for _, loss in points]))
    return points[int(gradient.argmin())][0]


def _plot_range_test(lrs: list[float], losses: list[float], pick: float, lightning: float | None, path: Path) -> Path:
    """The loss curve of the range test (log learning rate) with the pick marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.set_xscale("log")
    ax.axvline(pick, color="tab:red", label=f"pick {pick:.3g}")
    if lightning is not None:
        ax.axvline(lightning, color="tab:gray", linestyle=":", label=f"Lightning's suggestion {lightning:.3g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (running average)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def find_lr(
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    trainer_factory: Any,
    out_dir: Path,
    min_lr: float = 1e-6,
    max_lr: float = 1.0,
    num_training: int = 100,
) -> dict[str, Any]:
    """Lightning's learning-rate range test (``Tuner.lr_find``): the suggested rate, its curve and plot.

    The model's weights are restored afterwards. The pick is Lightning's steepest-descent rule
    on the correctly bias-corrected loss curve (:func:`unbiased_losses`); Lightning's own
    suggestion is recorded beside it. The plot is saved as ``out_dir/lr_find.png``; the record
    holds the pick, the loss at it and the loss at the start of the range.
    """
    from pytorch_lightning.tuner import Tuner

    out_dir.mkdir(parents=True, exist_ok=True)
    # no epoch limit: the range test runs num_training steps even when an epoch is shorter
    trainer: pl.Trainer = trainer_factory(default_root_dir=str(out_dir), max_epochs=-1)
    finder = Tuner(trainer).lr_find(
        module, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=num_training, update_attr=False
    )
    if finder is None:
        raise ConfigError("optim.optimizer.lr=auto: the learning-rate finder did not run; set a number instead")
    lrs = [float(v) for v in finder.results["lr"]]
    losses = unbiased_losses(finder.results["loss"])
    suggestion = steepest_descent(lrs, losses)
    if suggestion is None:
        raise ConfigError(
            "optim.optimizer.lr=auto: the learning-rate finder found no usable rate (too few steps or a "
            "diverging loss); set optim.optimizer.lr to a number"
        )
    index = lrs.index(suggestion)
    plot = _plot_range_test(lrs, losses, suggestion, finder.suggestion(), out_dir / "lr_find.png")
    return {
        "value": suggestion,
        "source": AUTO_LR,
        "lightning_suggestion": finder.suggestion(),
        "loss_at_suggestion": losses[index],
        "loss_at_start": losses[0],
        "range": [float(lrs[0]), float(lrs[-1])],
        "steps": len(lrs),
        "plot": str(plot),
    }
