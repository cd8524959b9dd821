"""On-device methods on the same edge model: no adaptation, test-batch BatchNorm, Tent and EATA; the same on
the fixed model of the same budget trained alone (``*_fixed``: what a composed sub-model must beat at equal
compute); and the cloud model itself with no adaptation and with test-batch BatchNorm (how much stronger the
teacher is under shift; ``cloud_only`` is the cloud model with Tent)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from ..core.adapt import bn, eata, source, tent
from .method import BenchContext, Method, TorchMethod


def _source(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = source.configure_model(model)
    return TorchMethod(name, model, lambda x: source.forward(x, model), ctx.to_tensor)


def _bn(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = bn.configure_model(model)
    return TorchMethod(name, model, lambda x: bn.forward(x, model), ctx.to_tensor)


def _tent(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(model))
    return TorchMethod(name, model, lambda x: tent.forward_and_adapt(x, model, opt), ctx.to_tensor)


def _eata(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = eata.configure_model(model)
    params = eata.collect_params(model)
    state = eata.EataState(ctx.num_classes)
    state.fishers = eata.compute_fisher(model, ctx.clean_holdout())
    opt = tent.make_optimizer(params)
    return TorchMethod(name, model, lambda x: eata.forward_and_adapt(x, model, opt, state), ctx.to_tensor)


ON_DEVICE = {"source": _source, "bn": _bn, "tent": _tent, "eata": _eata}


def _on(make: Callable, name: str, model: Callable[[BenchContext], nn.Module]) -> Callable[[BenchContext], Method]:
    return lambda ctx: make(name, model(ctx), ctx)


METHODS: dict[str, Callable[[BenchContext], Method]] = {
    **{name: _on(make, name, BenchContext.edge_model) for name, make in ON_DEVICE.items()},
    **{f"{name}_fixed": _on(make, f"{name}_fixed", BenchContext.edge_fixed) for name, make in ON_DEVICE.items()},
    "cloud_source": _on(_source, "cloud_source", BenchContext.cloud_model),
    "cloud_bn": _on(_bn, "cloud_bn", BenchContext.cloud_model),
}
