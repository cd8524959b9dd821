"""On-device methods on the same edge model: no adaptation, test-batch BatchNorm, Tent and EATA, and the same
on a fixed small model trained alone (what a composed sub-model must beat at equal compute)."""
from __future__ import annotations

from torch import nn

from ..core.adapt import bn, eata, source, tent
from .method import BenchContext, Method, TorchMethod


def _source(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = source.configure_model(model)
    return TorchMethod(name, model, lambda x: source.forward(x, model), ctx.to_tensor)


def _tent(name: str, model: nn.Module, ctx: BenchContext) -> Method:
    model = tent.configure_model(model)
    opt = tent.make_optimizer(tent.collect_params(model))
    return TorchMethod(name, model, lambda x: tent.forward_and_adapt(x, model, opt), ctx.to_tensor)


def make_source(ctx: BenchContext) -> Method:
    return _source("source", ctx.edge_model(), ctx)


def make_bn(ctx: BenchContext) -> Method:
    model = bn.configure_model(ctx.edge_model())
    return TorchMethod("bn", model, lambda x: bn.forward(x, model), ctx.to_tensor)


def make_tent(ctx: BenchContext) -> Method:
    return _tent("tent", ctx.edge_model(), ctx)


def make_eata(ctx: BenchContext) -> Method:
    model = eata.configure_model(ctx.edge_model())
    params = eata.collect_params(model)
    state = eata.EataState(ctx.num_classes)
    state.fishers = eata.compute_fisher(model, ctx.clean_holdout())
    opt = tent.make_optimizer(params)
    return TorchMethod("eata", model, lambda x: eata.forward_and_adapt(x, model, opt, state), ctx.to_tensor)


def make_source_small(ctx: BenchContext) -> Method:
    return _source("source_small", ctx.edge_small(), ctx)


def make_tent_small(ctx: BenchContext) -> Method:
    return _tent("tent_small", ctx.edge_small(), ctx)


METHODS = {"source": make_source, "bn": make_bn, "tent": make_tent, "eata": make_eata,
           "source_small": make_source_small, "tent_small": make_tent_small}
