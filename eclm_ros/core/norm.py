"""The adaptable part of every model: its normalisation layers' affine parameters.

CEMA adapts and ships only these (about 1-2 % of the weights); Tent and EATA train only these. Loading is
all-or-nothing so a bad update can never leave a model half-changed.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from .shift import ShiftMomentum

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)
BATCH_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)
EMA_MOMENTUM = 0.01  # per frame: BatchNorm statistics follow the last ~100 frames (0.02 / 0.04 measured worse)


class AffineStateError(ValueError):
    """An affine state that does not fit the model (names, shapes, values)."""


def norm_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every normalisation layer (the adaptable part), by name, in model order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, NORM_TYPES)]


def batch_norms(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers: the ones whose statistics follow the stream."""
    return [m for _, m in norm_layers(model) if isinstance(m, BATCH_NORM_TYPES)]


def affine_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The affine weight/bias parameters of every normalisation layer, by their state-dict name."""
    out = {}
    for name, m in norm_layers(model):
        for pname in ("weight", "bias"):
            p = getattr(m, pname, None)
            if isinstance(p, nn.Parameter):
                out[f"{name}.{pname}"] = p
    return out


def affine_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in affine_params(model).items()}


def check_affine(shapes: Mapping[str, tuple[int, ...]],
                 state: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, np.ndarray]:
    """``state`` as float32 arrays, once it names exactly the affine parameters in ``shapes``, each of its shape
    and finite; AffineStateError otherwise. Every runtime loads affine updates only through this check."""
    if set(state) != set(shapes):
        missing = sorted(set(shapes) - set(state))
        extra = sorted(set(state) - set(shapes))
        raise AffineStateError(f"affine state does not match the model: missing {missing[:4]}, unexpected {extra[:4]}")
    arrays = {}
    for k, v in state.items():
        a = np.asarray(v.detach().cpu() if isinstance(v, torch.Tensor) else v, dtype=np.float32)
        if a.shape != tuple(shapes[k]):
            raise AffineStateError(f"{k}: shape {a.shape}, the model has {tuple(shapes[k])}")
        if not np.isfinite(a).all():
            raise AffineStateError(f"{k}: NaN or Inf")
        arrays[k] = a
    return arrays


def load_affine(model: nn.Module, state: Mapping[str, torch.Tensor | np.ndarray]) -> None:
    """Replace the affine parameters; validates every tensor before touching the model."""
    params = affine_params(model)
    arrays = check_affine({k: tuple(p.shape) for k, p in params.items()}, state)
    with torch.no_grad():
        for k, a in arrays.items():
            params[k].copy_(torch.from_numpy(a))


def affine_param_fraction(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in affine_params(model).values()) / max(total, 1)


def use_batch_stats(model: nn.Module) -> nn.Module:
    """BatchNorm layers normalise with the current batch's statistics (test-time BN, as Tent does)."""
    for m in batch_norms(model):
        m.train()
        m.track_running_stats = False
        m.running_mean = None
        m.running_var = None
    return model


def use_ema_stats(model: nn.Module, momentum: float | ShiftMomentum = EMA_MOMENTUM) -> list:
    """Forward-only test-time BN for a frame-by-frame edge: each BatchNorm layer first folds the incoming
    activations' statistics into its running statistics (EMA), then normalises with them. A single frame
    cannot supply batch statistics; an EMA over recent frames tracks the environment just the same. The
    variance is taken about the updated running mean, not the frame's own mean: averaging each frame's own
    variance would miss how frames differ from each other and normalise with too small a variance.
    With a ``ShiftMomentum`` the momentum follows it; each frame's surprise at the first layer (before its
    statistics move) is left in its ``last_surprise`` for the caller to ``observe`` once the frame is served.
    Returns the hook handles (``handle.remove()`` restores plain eval behaviour)."""
    schedule = momentum if isinstance(momentum, ShiftMomentum) else ShiftMomentum(float(momentum), threshold=0)
    bns = [m for m in batch_norms(model) if m.running_mean is not None]

    def hook(bn: nn.BatchNorm2d, args):
        x = args[0].detach()
        m = schedule.momentum
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        if bn is bns[0]:
            schedule.last_surprise = float(((mean - bn.running_mean).square() / (bn.running_var + bn.eps)).mean())
        bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
        centred = x - bn.running_mean.view(1, -1, *([1] * (x.dim() - 2)))
        bn.running_var.mul_(1 - m).add_(centred.square().mean(dims), alpha=m)

    model.eval()
    return [m.register_forward_pre_hook(hook) for m in bns]


@torch.no_grad()
def recalibrate(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Re-estimate BatchNorm running statistics on clean inputs (a sub-model sees other activations than the
    full model it was cut from): a cumulative average over the batches, the momentum restored after."""
    bns = batch_norms(model)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i in range(0, len(images), batch_size):
        model(images[i:i + batch_size])
    model.eval()
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    return model
