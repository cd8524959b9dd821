"""EATA (Niu et al., ICML 2022): Tent restricted to reliable, non-redundant samples, weighted by confidence,
with a Fisher penalty that keeps important weights near their source values (anti-forgetting)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .tent import collect_params, configure_model, softmax_entropy

__all__ = ["EataState", "configure_model", "collect_params", "compute_fisher", "forward_and_adapt"]


@dataclass
class EataState:
    """EATA's running state. ``d_margin`` is the redundancy threshold on |cos(p, p_bar)|: 0.05 is EATA's
    ImageNet (1000 classes) value; with 10 classes probability vectors are never that orthogonal, so the
    CIFAR-10 setting 0.4 is the default here."""

    num_classes: int
    e_margin_factor: float = 0.4
    d_margin: float = 0.4
    fisher_alpha: float = 2000.0
    ema: float = 0.9
    mean_probs: torch.Tensor | None = None
    fishers: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    selected: int = 0
    seen: int = 0

    @property
    def e_margin(self) -> float:
        return self.e_margin_factor * math.log(self.num_classes)


def compute_fisher(model: nn.Module, clean_x: torch.Tensor, batch_size: int = 64) -> dict[str, tuple]:
    """Diagonal Fisher of the affine parameters on clean samples (pseudo-labels), with their source values.
    Call after ``configure_model``."""
    params = dict(model.named_parameters())
    wanted = {n: p for n, p in params.items() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in wanted.items()}
    batches = 0
    for i in range(0, len(clean_x), batch_size):
        out = model(clean_x[i:i + batch_size])
        F.cross_entropy(out, out.argmax(1)).backward()
        for n, p in wanted.items():
            fisher[n] += p.grad.detach() ** 2
        model.zero_grad(set_to_none=True)
        batches += 1
    return {n: (fisher[n] / max(batches, 1), wanted[n].detach().clone()) for n in wanted}


@torch.enable_grad()
def forward_and_adapt(x: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                      state: EataState) -> torch.Tensor:
    """Predict on the batch, then one weighted entropy step on the reliable, non-redundant samples."""
    outputs = model(x)
    entropy = softmax_entropy(outputs)
    reliable = torch.where(entropy < state.e_margin)[0]
    probs = outputs[reliable].softmax(1).detach()
    if state.mean_probs is not None and len(reliable):
        cos = F.cosine_similarity(state.mean_probs.unsqueeze(0), probs, dim=1)
        keep = torch.abs(cos) < state.d_margin
        reliable, probs = reliable[keep], probs[keep]
    state.seen += len(x)
    state.selected += len(reliable)
    if len(reliable):
        mean = probs.mean(0)
        state.mean_probs = mean if state.mean_probs is None else state.ema * state.mean_probs + (1 - state.ema) * mean
        ent = entropy[reliable]
        loss = (ent / torch.exp(ent.detach() - state.e_margin)).mean()
        if state.fishers:
            named = dict(model.named_parameters())
            loss = loss + state.fisher_alpha * sum((f * (named[n] - p0) ** 2).sum()
                                                   for n, (f, p0) in state.fishers.items())
        loss.backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return outputs.detach()
