"""One network serving many edges: its weights are held once, each edge owns only the affine parameters of the
normalisation layers (a flat vector) and their optimiser state.

What the cloud learns per edge (CEMA's teacher adaptation and student distillation) moves only those affine
parameters, with statistics of each edge's own batch. So a fleet needs one copy of the cloud model and one
copy per sub-model structure instead of two models per edge, and the edges' batches can run through the
network together: each norm layer normalises every edge's frames with that edge's statistics and scales them
with that edge's affine parameters (``segments``), which gives each edge exactly the gradient its own step
would. A single edge takes the native functional path, the very arithmetic of the layer it replaces.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .norm import BATCH_NORM_TYPES, NORM_TYPES, affine_params, check_affine, use_batch_stats


@dataclass
class AffineSlot:
    """One edge's affine parameters for one shared network, and its SGD momentum buffer (None before the first
    step, as torch.optim.SGD keeps it)."""

    params: torch.Tensor
    momentum: torch.Tensor | None = None

    def sgd(self, grad: torch.Tensor, lr: float, momentum: float) -> None:
        """torch.optim.SGD's update (momentum, no dampening, no weight decay) on the flat vector."""
        if momentum:
            if self.momentum is None:
                self.momentum = grad.detach().clone()
            else:
                self.momentum.mul_(momentum).add_(grad)
            grad = self.momentum
        self.params.add_(grad, alpha=-lr)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.params, self.momentum) if t is not None)


class _Context:
    """The batch a shared network is running: frames per edge and the edges' affine table [E, P]."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.table: torch.Tensor | None = None
        self.segment: torch.Tensor | None = None  # the edge of every frame (E > 1)


class SharedNorm(nn.Module):
    """Stands in for a normalisation layer: statistics per edge's frames (batch norm) or per frame, affine
    parameters from the edge's slice of the context's table."""

    def __init__(self, layer: nn.Module, weight: tuple[int, tuple[int, ...]] | None,
                 bias: tuple[int, tuple[int, ...]] | None, context: _Context) -> None:
        super().__init__()
        self.template = copy.deepcopy(layer).requires_grad_(False)  # what a plain copy is rebuilt from
        self.weight_at, self.bias_at = weight, bias
        self._context = context

    def _affine(self, at: tuple[int, tuple[int, ...]] | None) -> torch.Tensor | None:
        if at is None:
            return None
        offset, shape = at
        n = int(torch.Size(shape).numel())
        return self._context.table[:, offset:offset + n].reshape(-1, *shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ctx, layer = self._context, self.template
        w, b = self._affine(self.weight_at), self._affine(self.bias_at)
        if len(ctx.sizes) == 1:  # one edge: the layer's own functional form, batch statistics
            w, b = (None if w is None else w[0]), (None if b is None else b[0])
            if isinstance(layer, BATCH_NORM_TYPES):
                return F.batch_norm(x, None, None, w, b, True, 0.0, layer.eps)
            if isinstance(layer, nn.GroupNorm):
                return F.group_norm(x, layer.num_groups, w, b, layer.eps)
            return F.layer_norm(x, layer.normalized_shape, w, b, layer.eps)
        if isinstance(layer, BATCH_NORM_TYPES):
            y = _segment_normalise(x, ctx.segment, len(ctx.sizes), layer.eps)
        elif isinstance(layer, nn.GroupNorm):
            y = F.group_norm(x, layer.num_groups, None, None, layer.eps)
        else:
            y = F.layer_norm(x, layer.normalized_shape, None, None, layer.eps)
        shape = (x.shape[0],) + ((-1,) + (1,) * (x.dim() - 2) if not isinstance(layer, nn.LayerNorm) else
                                 (1,) * (x.dim() - 1 - len(layer.normalized_shape)) + tuple(layer.normalized_shape))
        if w is not None:
            y = y * w[ctx.segment].reshape(shape)
        if b is not None:
            y = y + b[ctx.segment].reshape(shape)
        return y


def _segment_normalise(x: torch.Tensor, segment: torch.Tensor, edges: int, eps: float) -> torch.Tensor:
    """Batch normalisation without affine, each edge's frames with their own mean and (biased) variance."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    count = torch.bincount(segment, minlength=edges).to(x.dtype)[:, None] * flat.shape[2]
    mean = torch.zeros(edges, x.shape[1], dtype=x.dtype).index_add(0, segment, flat.sum(2)) / count
    centred = flat - mean[segment][:, :, None]
    var = torch.zeros(edges, x.shape[1], dtype=x.dtype).index_add(0, segment, centred.square().sum(2)) / count
    return (centred * torch.rsqrt(var + eps)[segment][:, :, None]).reshape(x.shape)


class SharedModel:
    """A network whose normalisation layers take each edge's affine parameters: built once (a copy of
    ``model``), then run for any set of edges' batches at once with ``forward``. Only the affine parameters
    are ever trained; everything else is frozen."""

    def __init__(self, model: nn.Module) -> None:
        self.names = list(affine_params(model))
        self.shapes = {k: tuple(p.shape) for k, p in affine_params(model).items()}
        offsets, at = {}, 0
        for name in self.names:
            offsets[name] = (at, self.shapes[name])
            at += int(torch.Size(self.shapes[name]).numel())
        self.size = at
        self.initial = self.flat(affine_params(model))
        self.module = copy.deepcopy(model).requires_grad_(False).train()
        self._context = _Context()
        self._lock = threading.Lock()  # one batch at a time through the shared layers
        norms = [(name, layer) for name, layer in self.module.named_modules() if isinstance(layer, NORM_TYPES)]
        self._norm_prefixes = tuple(f"{name}.template." for name, _ in norms)
        for name, layer in norms:
            shared = SharedNorm(layer, offsets.get(f"{name}.weight"), offsets.get(f"{name}.bias"), self._context)
            parent, _, attr = name.rpartition(".")
            setattr(self.module.get_submodule(parent) if parent else self.module, attr, shared)

    def flat(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Named affine parameters (exactly this network's) as one float32 vector; AffineStateError otherwise."""
        arrays = check_affine(self.shapes, state)
        if not arrays:
            return torch.zeros(0)
        return torch.cat([torch.from_numpy(arrays[k]).reshape(-1) for k in self.names])

    def named(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector as named affine parameters (copies), as updates and state dicts carry them."""
        out, at = {}, 0
        for name in self.names:
            n = int(torch.Size(self.shapes[name]).numel())
            out[name] = flat[at:at + n].detach().reshape(self.shapes[name]).clone()
            at += n
        return out

    def slot(self, state: Mapping[str, torch.Tensor] | None = None) -> AffineSlot:
        """A new edge's parameters: the network's own, or ``state``."""
        return AffineSlot(self.initial.clone() if state is None else self.flat(state))

    def forward(self, x: torch.Tensor, sizes: Sequence[int], table: torch.Tensor) -> torch.Tensor:
        """Run consecutive batches of ``sizes`` frames, batch ``i`` with the affine parameters ``table[i]``."""
        if sum(sizes) != len(x) or len(sizes) != len(table):
            raise ValueError(f"{len(x)} frames in batches of {list(sizes)} for {len(table)} affine vectors")
        with self._lock:
            ctx = self._context
            ctx.sizes, ctx.table = list(sizes), table
            ctx.segment = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)) \
                if len(sizes) > 1 else None
            try:
                return self.module(x)
            finally:
                ctx.table = ctx.segment = None

    def materialise(self, flat: torch.Tensor) -> nn.Module:
        """A standalone copy with these affine parameters, normalising with each batch's own statistics (what
        module scoring and merge checks take)."""
        model = copy.deepcopy(self.module)
        for name, layer in list(model.named_modules()):
            if isinstance(layer, SharedNorm):
                plain = copy.deepcopy(layer.template)
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, attr, plain)
        with torch.no_grad():
            for name, value in self.named(flat).items():
                model.get_parameter(name).copy_(value)
        return use_batch_stats(model)

    def load_weights(self, model: nn.Module) -> None:
        """Take ``model``'s current weights outside the normalisation layers (the cloud model after modules
        were integrated into it); the affine parameters stay per edge."""
        source = model.state_dict()
        self.module.load_state_dict({k: source[k.replace(".template.", ".") if k.startswith(self._norm_prefixes)
                                              else k] for k in self.module.state_dict()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.module.state_dict().values())

