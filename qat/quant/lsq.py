"""Learned step sizes (LSQ, Esser et al. 2020, "Learned Step Size Quantization").

:class:`LearnedScaleFakeQuantize` is qat's fake-quant module with its ``scale`` an
``nn.Parameter`` trained by gradient. The forward is the same fake-quant as
:class:`~qat.quant.fakequant.FastFakeQuantize` (same rounding, same grid); the backward also
gives the scale LSQ's gradient, per element

    d x̂ / d s = round(x/s) − x/s        inside the grid
              = quant_min − zero_point  below it,  quant_max − zero_point  above it

summed over the tensor (per channel for weights) and multiplied by LSQ's gradient scale
``g = 1 / sqrt(N · Qp)``: ``N`` the values one step size serves per sample (an activation's
features per sample, a weight channel's elements), ``Qp`` the positive levels of the grid
(``quant_max − zero_point``: 255 for unsigned activations, 127 for symmetric ones, 63 for x86's
7-bit weights). Without ``g`` the step size's update is out of proportion to the weights'.

Why the design:

- **Positive**: the forward uses ``max(scale, eps)`` (the observer's ``eps``), and the gradient
  reaches the raw parameter even below the floor, so a scale pushed too low can recover.
- **Zero point fixed** from calibration: ``convert`` needs an integer zero point, and a learned
  float offset (LSQ+) would have to be rounded in the forward to stay exact; after ReLU-family
  activations (most of a CNN's grids) the zero point is 0, where an offset has nothing to learn.
- **Exact convert**: :meth:`calculate_qparams` returns the scale the forward uses, and every
  converter (torch.ao's modules, qat's lookup tables) reads its grid from ``calculate_qparams``,
  so int8 runs the learned grid.
- **Observers keep working**: the module is a ``FakeQuantize`` with its observer. With the
  observer on it behaves as ``FastFakeQuantize`` (the observer sets the grid, no scale gradient:
  calibration); with it off the scale is learned. :func:`learn_scales` swaps the modules in when
  QAT starts and turns their observers off.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qat.quant.backend import FakeQuantize, FixedQParamsFakeQuantize
from qat.quant.fakequant import FastFakeQuantize, fake_quantize_per_channel, fake_quantize_per_tensor

__all__ = ["LearnedScaleFakeQuantize", "learn_scales", "lsq_grad_scale"]


def lsq_grad_scale(values_per_scale: int, zero_point: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """LSQ's ``1 / sqrt(N · Qp)``, per zero point (one per scale).

    ``Qp`` counts the grid's levels above the zero point; a grid with none (a range that is all
    negative) counts those below it instead.
    """
    above = quant_max - zero_point.to(torch.float32)
    qp = torch.where(above > 0, above, zero_point.to(torch.float32) - quant_min)
    return torch.rsqrt(qp * float(values_per_scale))


class _LSQ(torch.autograd.Function):
    """Fake-quant with a learnable step size; ``scale``/``zero_point``/``floor`` broadcast over ``x``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        scale: Tensor,
        zero_point: Tensor,
        floor: Tensor,
        grad_scale: Tensor,
        quant_min: int,
        quant_max: int,
    ) -> Tensor:
        s = torch.maximum(scale.to(torch.float32), floor)
        inv_scale = 1.0 / s
        zp = zero_point.to(x.dtype)
        scaled = torch.mul(x, inv_scale)
        q = scaled.round().add_(zp)
        clamped = q.clamp(quant_min, quant_max)
        inside = clamped == q
        codes = clamped.sub_(zp)
        if ctx.needs_input_grad[1]:
            # d x̂/d s: round(x/s) − x/s inside the grid, the clamped code (relative to zp) outside.
            ctx.save_for_backward(inside, codes - scaled * inside)
            ctx.scale_shape = scale.shape
        else:
            ctx.save_for_backward(inside, None)
        ctx.grad_scale = grad_scale
        return codes * s

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inside, d_scale = ctx.saved_tensors
        grad_x = grad * inside if ctx.needs_input_grad[0] else None
        grad_s = None
        if d_scale is not None:
            per_element = grad * d_scale
            if len(ctx.scale_shape) == 1 and ctx.scale_shape[0] == 1:  # per-tensor
                total = per_element.sum().reshape(1)
            else:  # per-channel: ``scale`` is shaped to broadcast, sum over its size-1 dims
                dims = [i for i, n in enumerate(ctx.scale_shape) if n == 1]
                total = per_element.sum(dims, keepdim=True)
            grad_s = total * ctx.grad_scale.reshape(ctx.scale_shape)
        return grad_x, grad_s, None, None, None, None, None


class LearnedScaleFakeQuantize(FastFakeQuantize):
    """``FastFakeQuantize`` whose ``scale`` is an ``nn.Parameter`` learned with LSQ's gradient.

    State dict keys are ``FakeQuantize``'s (``scale`` is now a parameter), so checkpoints of the
    fake-quant model load into it.
    """

    def __init__(self, observer: Any = None, quant_min: int | None = None, quant_max: int | None = None, **kwargs):
        if observer is None:
            super().__init__(quant_min=quant_min, quant_max=quant_max, **kwargs)
        else:
            super().__init__(observer=observer, quant_min=quant_min, quant_max=quant_max, **kwargs)
        scale = self._buffers.pop("scale")
        self.scale = nn.Parameter(scale.clone())

    @classmethod
    def from_fake_quant(cls, fq: FakeQuantize) -> LearnedScaleFakeQuantize:
        """The same observer (shared, with its calibration state), grid and switches, scale learnable."""
        observer = fq.activation_post_process
        new = cls(
            observer=lambda **_: observer,
            quant_min=fq.quant_min,
            quant_max=fq.quant_max,
            dtype=fq.dtype,
        )
        with torch.no_grad():
            new.scale.data = fq.scale.detach().clone().float()
            new.zero_point.resize_(fq.zero_point.shape).copy_(fq.zero_point)
            new.fake_quant_enabled.copy_(fq.fake_quant_enabled)
            new.observer_enabled.copy_(fq.observer_enabled)
        return new.to(fq.scale.device)

    def _floor(self) -> Tensor:
        eps = getattr(self.activation_post_process, "eps", None)
        if eps is None:
            return torch.tensor(torch.finfo(torch.float32).eps, device=self.scale.device)
        return eps.detach().to(self.scale.device, torch.float32).reshape(())

    def effective_scale(self) -> Tensor:
        """The step size the forward uses (the parameter, floored at the observer's ``eps``)."""
        return torch.maximum(self.scale.detach().float(), self._floor())

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """The grid the forward uses, which is what ``convert`` builds the int8 model on."""
        return self.effective_scale().clone(), self.zero_point.clone()

    def _observe(self, X: Tensor) -> None:
        self.activation_post_process(X.detach())
        scale, zero_point = self.activation_post_process.calculate_qparams()
        with torch.no_grad():
            if self.scale.shape != scale.shape:
                self.scale.data = torch.empty(scale.shape, device=self.scale.device)
                self.zero_point.resize_(zero_point.shape)
            self.scale.copy_(scale.to(self.scale.device))
            self.zero_point.copy_(zero_point.to(self.zero_point.device))

    def forward(self, X: Tensor) -> Tensor:
        observing = bool(self.observer_enabled.item())
        if observing:
            self._observe(X)
        if not self.fake_quant_enabled.item():
            return X
        x = X if X.dtype == torch.float32 else X.float()
        if observing:  # the observer owns the grid: plain fake-quant, no step-size gradient
            scale = self.scale.detach()
            if self.is_per_channel:
                y = fake_quantize_per_channel(x, scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max)
            else:
                y = fake_quantize_per_tensor(x, scale, self.zero_point, self.quant_min, self.quant_max)
        else:
            y = self._learned(x)
        return y if y.dtype == X.dtype else y.to(X.dtype)

    def _learned(self, x: Tensor) -> Tensor:
        if self.is_per_channel:
            shape = [1] * x.dim()
            shape[self.ch_axis] = -1
            per_scale = x.numel() // max(x.shape[self.ch_axis], 1)
            scale, zero_point = self.scale.reshape(shape), self.zero_point.reshape(shape)
        else:
            per_scale = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()  # features per sample
            scale, zero_point = self.scale, self.zero_point
        g = lsq_grad_scale(max(per_scale, 1), self.zero_point, self.quant_min, self.quant_max).to(x.device)
        return _LSQ.apply(x, scale, zero_point, self._floor(), g, self.quant_min, self.quant_max)

    # -- state dict: ``scale`` is a parameter, but its shape still follows the loaded grid ---------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        nn.Module._save_to_state_dict(self, destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        scale, zero_point = state_dict.get(prefix + "scale"), state_dict.get(prefix + "zero_point")
        if scale is not None and scale.shape != self.scale.shape:
            self.scale.data = torch.empty(scale.shape, device=self.scale.device)
        if zero_point is not None and zero_point.shape != self.zero_point.shape:
            self.zero_point.resize_(zero_point.shape)
        nn.Module._load_from_state_dict(self, state_dict, prefix, *args)


def _learnable(fq: nn.Module) -> bool:
    return isinstance(fq, FastFakeQuantize) and not isinstance(fq, (LearnedScaleFakeQuantize, FixedQParamsFakeQuantize))


def learn_scales(model: nn.Module, activations: bool = True, weights: bool = False) -> nn.Module:
    """Swap the observed fake-quants of ``model`` for :class:`LearnedScaleFakeQuantize`, observers off.

    Each learned step size starts from the module's current (calibrated) grid. Fixed grids
    (scaled ``QuantStub``, sigmoid, the ReLU6 clamp) stay fixed: their grid is the function.
    ``weights`` learns the per-channel weight step sizes too (their observers stop tracking the
    weights; a weight growing past its grid is clipped, as LSQ trains it).
    """
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        for name, child in parent.named_children():
            is_weight = name == "weight_fake_quant"
            if _learnable(child) and (weights if is_weight else activations):
                swaps.append((parent, name, child))
    for parent, name, fq in swaps:
        if fq.is_per_channel and fq.activation_post_process.min_val.numel() == 0:
            raise ValueError(
                "learn_scales(): a per-channel weight grid has not been observed yet; calibrate the model "
                "(calibrate(model, batches)) before learning its scales"
            )
        new = LearnedScaleFakeQuantize.from_fake_quant(fq)
        new.disable_observer()
        setattr(parent, name, new)
    return model
