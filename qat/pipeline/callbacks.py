"""Training callbacks: QAT schedule (BN / observer freezing), DDP state sync, NaN-loss guard, step timing,
last-epoch training accuracy."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import pytorch_lightning as pl
import torch

from qat.pipeline.errors import NaNLossError
from qat.quant import freeze_activation_observers, freeze_bn_stats

__all__ = ["FreezeBNStats", "FreezeObservers", "NaNLossGuard", "StepTimer", "SyncRankState", "TrainTop1"]


def _inner(pl_module: pl.LightningModule) -> torch.nn.Module:
    return getattr(pl_module, "model", pl_module)


class FreezeBNStats(pl.Callback):
    """From QAT epoch ``epoch`` on, fused conv-BN layers use (and stop updating) their running statistics.

    Applied at every epoch start, so a run resumed from a checkpoint is in the same state.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            freeze_bn_stats(_inner(pl_module))


class FreezeObservers(pl.Callback):
    """From QAT epoch ``epoch`` on, activation scales stay fixed (weight scales keep tracking the weights)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch >= self.epoch:
            freeze_activation_observers(_inner(pl_module))


class SyncRankState(pl.Callback):
    """Under DDP, every rank ends each epoch with rank 0's buffers: observers, fake-quant grids, BN stats.

    DDP broadcasts buffers from rank 0 at the start of each forward, so after the last step every
    rank is one update apart. Broadcasting at epoch end makes the ranks identical, so whichever
    rank's model is used (rank 0 exports) holds the same grids. ``consistent`` records whether every
    parameter and buffer matched across ranks afterwards (checked by an all-gathered checksum).
    """

    def __init__(self) -> None:
        self.world_size = 1
        self.consistent: bool | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.world_size = trainer.world_size
        if trainer.world_size < 2 or not torch.distributed.is_initialized():
            return
        model = _inner(pl_module)
        with torch.no_grad():
            for buf in model.buffers():
                torch.distributed.broadcast(buf, src=0)
            tensors = [t.detach().double().sum().reshape(1) for t in (*model.parameters(), *model.buffers())]
            checksum = torch.cat(tensors) if tensors else torch.zeros(1, dtype=torch.float64)
            gathered = [torch.empty_like(checksum) for _ in range(trainer.world_size)]
            torch.distributed.all_gather(gathered, checksum)
        self.consistent = all(torch.equal(g, gathered[0]) for g in gathered)


class NaNLossGuard(pl.Callback):
    """Stops training with advice as soon as the training loss is NaN or infinite."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def advice(self, model: torch.nn.Module) -> str:
        """What to change. Freezing BN is offered only when the model still has BN layers
        (``quant.bn=track``); with ``quant.bn=fold`` they were folded into the convs."""
        if self.stage == "float":
            return (
                "lower the learning rate (optim.optimizer.lr=...) or raise warm-up "
                "(optim.scheduler.warmup_fraction=0.1)"
            )
        has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
        freeze = "freeze BN earlier (quant.freeze_bn_epoch=0), " if has_bn else ""
        return f"lower quant.lr_scale (e.g. 0.001), {freeze}or check the float checkpoint's accuracy"

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or math.isfinite(float(loss)):
            return
        advice = self.advice(pl_module)
        raise NaNLossError(
            f"{self.stage} training loss became {float(loss)} at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}. Fix: {advice}; also check that inputs are normalised to [-1, 1]."
        )


class StepTimer(pl.Callback):
    """Wall time of each training step (forward, backward, optimizer; data loading excluded).

    :attr:`median_s` is the median step time, the first ``warmup`` steps left out when there are more.
    """

    def __init__(self, warmup: int = 3) -> None:
        self.warmup = warmup
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.times.append(time.perf_counter() - self._start)

    @property
    def median_s(self) -> float | None:
        times = self.times[self.warmup :] if len(self.times) > self.warmup else self.times
        return statistics.median(times) if times else None


class TrainTop1(pl.Callback):
    """The last training epoch's top-1 (train mode, augmented batches), as the module logged it.

    Free to get, and what the post-stage health check compares the held-out top-1 with.
    """

    def __init__(self, key: str = "train/top1") -> None:
        self.key = key
        self.top1: float | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.key)
        self.top1 = float(value) if value is not None else None
