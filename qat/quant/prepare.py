"""float → fake-quant (QAT or calibration) → int8.

One prepared model serves both PTQ and QAT: :func:`prepare_calibration` is :func:`prepare_qat`
in calibration mode (observers on, fake-quant off, eval), so a calibrated model continues into
QAT as is -- Horizon's recipe of initialising QAT from calibration.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from qat.quant.backend import (
    DeQuantStub,
    FakeQuantizeBase,
    FixedQParamsFakeQuantize,
    get_default_qat_module_mappings,
    get_default_qconfig_propagation_list,
    get_default_static_quant_module_mappings,
    nniqat,
    nnq,
    tq,
)
from qat.quant.channel_gate import fuse_channel_gates
from qat.quant.convbn import fold_bn, use_fast_conv_bn
from qat.quant.fast_int8 import use_fast_int8_kernels, weight_with_codes
from qat.quant.float_functional import functional_mapping
from qat.quant.fuse import FIXED_QPARAMS_ATTR, collect_patterns, fuse_model, replace_module
from qat.quant.int8_ops import QuantizedLUT, QuantizedRequant, QuantizedSoftmax, policy_for
from qat.quant.lsq import learn_scales
from qat.quant.mixed import (
    CONVERTED_ATTR,
    LAYERS_ATTR,
    attach_route_hook,
    detach_islands,
    finish_islands,
    layer_table,
    place_islands,
)
from qat.quant.qconfig import QuantConfig, get_qconfig

__all__ = [
    "BN_MODES",
    "calibrate",
    "convert",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "freeze_activation_observers",
    "freeze_bn_stats",
    "prepare_calibration",
    "prepare_qat",
    "start_qat",
    "unfreeze_bn_stats",
]

_QCONFIG_ATTR = "qat_quant_config"


def _subclass_mapping(model: nn.Module, base: dict[type, type]) -> dict[type, type]:
    """``base`` extended with subclasses of its keys found in ``model`` (e.g. ``qat.nn.QuantStub``)."""
    mapping = dict(base)
    for m in model.modules():
        t = type(m)
        if t not in mapping:
            for key, value in base.items():
                if issubclass(t, key) and key is not nn.Module:
                    mapping[t] = value
                    break
    return mapping


def _allow_list(model: nn.Module) -> set[type]:
    allow = set(get_default_qconfig_propagation_list())
    for m in model.modules():
        policy = policy_for(m)
        if policy is None:
            continue
        if policy.kind == "passthrough":
            allow.discard(type(m))
        else:
            allow.add(type(m))
    allow.update(_subclass_mapping(model, get_default_static_quant_module_mappings()))
    return allow


def _assign_qconfigs(model: nn.Module, cfg: QuantConfig, high_precision_output: bool) -> None:
    model.qconfig = cfg.qconfig()
    for m in model.modules():
        fixed = getattr(m, FIXED_QPARAMS_ATTR, None) or getattr(m, "fixed_qparams", None)
        policy = policy_for(m)
        if fixed is None and policy is not None:
            fixed = policy.fixed_qparams
        if fixed is not None:
            m.qconfig = cfg.fixed_qconfig(*fixed)
    if high_precision_output:
        _keep_output_float(model)


def _keep_output_float(model: nn.Module) -> None:
    """Leave the last Linear/Conv (the classifier) in float, fed through a DeQuantStub."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            last = name
    if last is None:
        raise ValueError("high_precision_output: the model has no Linear or Conv2d layer")
    layer = model.get_submodule(last)
    layer.qconfig = None
    dequant = DeQuantStub()
    dequant.qconfig = model.qconfig
    replace_module(model, last, nn.Sequential(dequant, layer))


def _swap_in_fake_quant(model: nn.Module) -> nn.Module:
    """QAT modules and fake-quant for a fused model whose qconfigs are assigned (train mode)."""
    model.train()
    qat_mapping = _subclass_mapping(model, get_default_qat_module_mappings())
    tq.propagate_qconfig_(model, qconfig_dict=None)
    tq.convert(model, mapping=qat_mapping, inplace=True, remove_qconfig=False)
    tq.prepare(
        model,
        inplace=True,
        allow_list=_allow_list(model),
        observer_non_leaf_module_list=set(qat_mapping.values()),
    )
    return model


def prepare_qat(
    model: nn.Module,
    qconfig: str | QuantConfig = "x86",
    inplace: bool = False,
    high_precision_output: bool = False,
    keep_float: Sequence[str] = (),
    int16: Sequence[str] = (),
) -> nn.Module:
    """Fuse, attach fake-quant and swap in QAT modules; the result trains like the float model.

    ``qconfig`` is a target name (``x86``/``arm``/``npu``) or a :class:`QuantConfig`.
    ``high_precision_output`` keeps the classifier (last Linear/Conv) in float, as Horizon's
    high-precision output does. ``keep_float`` / ``int16`` name layers (names, paths or enclosing
    modules; globs allowed) that run in float, or with a 16-bit output grid, between int8 layers
    (:mod:`qat.quant.mixed`); :func:`qat.quant.quant_layers` lists the layers and their precision.
    """
    cfg = get_qconfig(qconfig)
    if not inplace:
        model = copy.deepcopy(model)
    was_training = model.training
    patterns = collect_patterns(model)
    fuse_model(model)
    _assign_qconfigs(model, cfg, high_precision_output)
    if keep_float or int16:
        dry = _swap_in_fake_quant(copy.deepcopy(model))
        place_islands(model, dry, cfg, list(keep_float), list(int16))
    _swap_in_fake_quant(model)
    attach_route_hook(model)
    use_fast_conv_bn(model)
    setattr(model, _QCONFIG_ATTR, cfg)
    setattr(model, LAYERS_ATTR, layer_table(model, patterns))
    model.train(was_training)
    return model


def _fake_quants(model: nn.Module) -> Iterable[tuple[str, FakeQuantizeBase]]:
    return ((n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantizeBase))


def enable_observer(model: nn.Module) -> nn.Module:
    model.apply(tq.enable_observer)
    return model


def disable_observer(model: nn.Module) -> nn.Module:
    model.apply(tq.disable_observer)
    return model


def enable_fake_quant(model: nn.Module) -> nn.Module:
    model.apply(tq.enable_fake_quant)
    return model


def disable_fake_quant(model: nn.Module, keep_fixed: bool = True) -> nn.Module:
    """Turn fake-quant off; fixed-grid ones (sigmoid, ReLU6 clamp, scaled stubs) stay on by default."""
    for _, fq in _fake_quants(model):
        if not (keep_fixed and isinstance(fq, FixedQParamsFakeQuantize)):
            fq.disable_fake_quant()
    return model


def freeze_activation_observers(model: nn.Module) -> nn.Module:
    """Fix activation scales (Horizon's QAT default) while weight scales keep tracking the weights."""
    for name, fq in _fake_quants(model):
        if not name.endswith("weight_fake_quant"):
            fq.disable_observer()
    return model


def freeze_bn_stats(model: nn.Module) -> nn.Module:
    model.apply(nniqat.freeze_bn_stats)
    return model


def unfreeze_bn_stats(model: nn.Module) -> nn.Module:
    model.apply(nniqat.update_bn_stats)
    return model


def prepare_calibration(
    model: nn.Module,
    qconfig: str | QuantConfig = "x86",
    activation_observer: str | None = "percentile",
    inplace: bool = False,
    high_precision_output: bool = False,
    keep_float: Sequence[str] = (),
    int16: Sequence[str] = (),
) -> nn.Module:
    """A fake-quant model in calibration mode: eval, observers on, fake-quant off.

    Feed it batches with :func:`calibrate`, then :func:`convert` it (PTQ) or :func:`start_qat`.
    ``keep_float`` / ``int16``: as in :func:`prepare_qat`.
    """
    cfg = get_qconfig(qconfig)
    if activation_observer is not None:
        cfg = cfg.with_observer(activation_observer)
    model = prepare_qat(
        model,
        cfg,
        inplace=inplace,
        high_precision_output=high_precision_output,
        keep_float=keep_float,
        int16=int16,
    )
    model.eval()
    enable_observer(model)
    disable_fake_quant(model)
    return model


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    num_batches: int | None = None,
    progress: bool = False,
) -> nn.Module:
    """Run ``batches`` (tensors, or ``(input, target, ...)`` tuples) through a calibration model."""
    model.eval()
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, total=num_batches, desc="calibrate", leave=False)
    seen = 0
    for batch in it:
        if num_batches is not None and seen >= num_batches:
            break
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        model(x)
        seen += 1
    if seen == 0:
        raise ValueError("calibrate() got no batches: check the calibration data loader")
    return model


#: ``start_qat``'s BatchNorm treatments.
BN_MODES = ("fold", "track")


def start_qat(
    model: nn.Module,
    fixed_activation_scales: bool = True,
    bn: str = "fold",
    learn_activation_scales: bool = False,
    learn_weight_scales: bool = False,
) -> nn.Module:
    """Switch a (calibrated) fake-quant model to QAT: train mode, fake-quant on.

    With ``fixed_activation_scales`` the activation grids found by calibration stay fixed
    (Horizon's default); otherwise their observers keep updating during QAT.
    ``learn_activation_scales`` / ``learn_weight_scales`` make those step sizes parameters trained
    by gradient from the calibrated grids (LSQ, :mod:`qat.quant.lsq`; fixed grids stay fixed);
    build the optimizer after this call so it holds them. ``bn="fold"``
    (Horizon's default QAT mode) folds every conv+BN into one fake-quant conv first
    (:func:`qat.quant.convbn.fold_bn`): the step does no BN work and trains what int8 runs;
    ``bn="track"`` keeps torch.ao's conv+BN modules, BN using batch statistics until
    :func:`freeze_bn_stats`.
    """
    if bn not in BN_MODES:
        raise ValueError(f"start_qat(bn={bn!r}): use one of {BN_MODES}")
    if bn == "fold":
        fold_bn(model)
    model.train()
    enable_fake_quant(model)
    enable_observer(model)
    if fixed_activation_scales:
        freeze_activation_observers(model)
    if learn_activation_scales or learn_weight_scales:
        learn_scales(model, activations=learn_activation_scales, weights=learn_weight_scales)
    return model


def _check_observed(model: nn.Module) -> None:
    """Refuse to convert layers whose output observers never saw data (torch would use scale 1.0)."""
    blind, broken = [], []
    for name, m in model.named_modules():
        fq = getattr(m, "activation_post_process", None)
        observer = getattr(fq, "activation_post_process", None)
        if not (hasattr(m, "weight_fake_quant") and hasattr(observer, "min_val")):
            continue
        lo = observer.min_val
        if lo.numel() == 0 or bool(torch.isinf(lo).all()):
            blind.append(name)
        elif not bool(torch.isfinite(lo).all() and torch.isfinite(observer.max_val).all()):
            broken.append(name)
    if broken:
        raise ValueError(
            f"convert(): layer(s) {', '.join(broken[:3])} observed NaN/inf activations -- training diverged; "
            "lower the learning rate or restart QAT from the calibrated model"
        )
    if blind:
        raise ValueError(
            f"convert(): the output observers of {len(blind)} layer(s) never saw data ({', '.join(blind[:3])}"
            f"{', ...' if len(blind) > 3 else ''}); run calibrate(model, batches) or train the QAT model first"
        )


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The real int8 model (eval mode, quantized kernels) from a prepared fake-quant model.

    Observers keep running in ``eval()`` mode: to compare the fake-quant model with the
    int8 one, call :func:`disable_observer` on it first so its grids stay the converted ones.
    """
    cfg = getattr(model, _QCONFIG_ATTR, None)
    if cfg is None:
        raise ValueError("convert() needs a model returned by prepare_qat()/prepare_calibration()")
    _check_observed(model)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    with _EngineScope(cfg.engine):
        mapping = _subclass_mapping(model, get_default_static_quant_module_mappings())
        mapping.update(functional_mapping(model))  # qat.nn.FloatFunctional: Horizon's ops too
        for m in model.modules():
            policy = policy_for(m)
            if policy is not None and policy.kind == "lut":
                mapping[type(m)] = QuantizedLUT
            elif policy is not None and policy.kind == "requant":
                mapping[type(m)] = QuantizedRequant
            elif policy is not None and policy.kind == "softmax":
                mapping[type(m)] = QuantizedSoftmax
        islands = detach_islands(model)
        tq.convert(model, mapping=mapping, inplace=True)
        finish_islands(model, islands)
        _clamp_int8_weights(model, cfg)
        use_fast_int8_kernels(model)
        fuse_channel_gates(model)
    scope = _EngineScope(cfg.engine)
    model.register_forward_pre_hook(scope.enter_hook)
    model.register_forward_hook(scope.exit_hook, always_call=True)
    setattr(model, CONVERTED_ATTR, True)
    return model


class _EngineScope:
    """Runs code under one quantized engine and puts the global ``torch.backends.quantized.engine`` back.

    ``convert`` packs weights under the target's engine inside one scope; the converted model's
    forward hooks open another per call, so the int8 model always runs with the kernels it was
    converted for (engines requantize differently) and never changes the caller's engine.
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._saved: list[str] = []

    def __enter__(self) -> _EngineScope:
        self._saved.append(torch.backends.quantized.engine)
        torch.backends.quantized.engine = self.engine
        return self

    def __exit__(self, *exc: object) -> None:
        torch.backends.quantized.engine = self._saved.pop()

    def enter_hook(self, module: nn.Module, args: Any) -> None:
        self.__enter__()

    def exit_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.__exit__()


def _clamp_int8_weights(model: nn.Module, cfg: QuantConfig) -> None:
    """Clamp int8 weights to the fake-quant range (±63 on x86), as fake-quant did in training.

    Weight scales are observed on the forward before the last optimizer step; a weight that grew
    past them is clamped by fake-quant but would be stored as 64 or 65 by torch's convert.
    """
    fq = cfg.weight()()
    lo, hi = fq.quant_min, fq.quant_max
    for m in model.modules():
        if not isinstance(m, (nnq.Conv2d, nnq.Linear)):
            continue
        w = m.weight()
        ints = w.int_repr()
        if ints.min() >= lo and ints.max() <= hi:
            continue
        m.set_weight_bias(weight_with_codes(w, ints.clamp(lo, hi)), m.bias())
