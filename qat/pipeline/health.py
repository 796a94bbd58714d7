"""Health check after each stage: held-out accuracy far below training accuracy means a broken model.

The typical cause on a short run is BatchNorm running statistics that have not converged (a
small BN momentum, few steps): train mode uses batch statistics and fits, eval mode uses the
running ones and predicts one class for everything. The check compares the held-out top-1 with
the training top-1 of the stage that produced the weights, both measured above chance.
"""

from __future__ import annotations

__all__ = ["HEALTH_MODES", "collapse_message"]

HEALTH_MODES = ("warn", "error", "off")

# Fires when the held-out top-1 keeps less than this share of the training top-1's margin over chance...
_KEPT_MARGIN = 0.25
# ...and the training top-1 is at least this far above chance (a model that learned something).
_MIN_TRAIN_MARGIN = 0.3


def _collapsed(top1: float, train_top1: float, chance: float) -> bool:
    margin = train_top1 - chance
    return margin >= _MIN_TRAIN_MARGIN and top1 - chance < _KEPT_MARGIN * margin


def collapse_message(
    stage: str,
    top1: float,
    train_top1: float | None,
    num_classes: int,
    precise_bn_batches: int,
    float_top1: float | None = None,
) -> str | None:
    """The warning for a collapsed stage (held-out top-1 near chance, training top-1 high), or None.

    ``float_top1``: the float stage's held-out top-1; when it was healthy, a later stage's collapse
    is blamed on quantization rather than on BN statistics.
    """
    if train_top1 is None or num_classes < 2:
        return None
    chance = 1.0 / num_classes
    if not _collapsed(top1, train_top1, chance):
        return None
    head = (
        f"stage {stage}: held-out top-1 {100 * top1:.2f} % is near chance ({100 * chance:.2f} %) while training "
        f"top-1 is {100 * train_top1:.2f} %."
    )
    if stage != "float" and float_top1 is not None and not _collapsed(float_top1, train_top1, chance):
        return (
            f"{head} The float model scored {100 * float_top1:.2f} %, so quantization broke it. Fix: look at "
            "check_model's warnings in train.log, try another quant.calib_observer (e.g. percentile or mse) or "
            "more quant.calib_batches, or keep the worst layers in float."
        )
    if precise_bn_batches > 0:
        fix = (
            "BN statistics were recomputed (precise_bn_batches="
            f"{precise_bn_batches}) and it still collapsed: train longer (trainer.max_epochs), raise "
            "precise_bn_batches, or check that the held-out split matches the training data"
        )
    else:
        fix = (
            "precise BN is off (precise_bn_batches=0): set precise_bn_batches=64 to recompute the BN "
            "statistics over training batches, or train longer (trainer.max_epochs) / raise the model's "
            "BN momentum"
        )
    return (
        f"{head} Likely cause: BatchNorm running statistics have not converged "
        f"(too few steps, or a small BN momentum such as 0.01). Fix: {fix}."
    )
