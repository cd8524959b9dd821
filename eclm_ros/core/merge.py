"""ECAvg: average what several edges learned, fine-tune on their combined uploads, share it, but only when a
held-out check shows the merge helps. ECAvg's own results show averaging can hurt (negative transfer on MNIST),
so a merge that does not beat the current model on held-out frames is refused with the reason."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn



def average(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Data-weighted average of state dicts; integer buffers (BN batch counters) take the largest value."""
    if not states or len(states) != len(weights):
        raise ValueError(f"need one weight per state, got {len(states)} states and {len(weights)} weights")
    keys = set(states[0])
    if any(set(s) != keys for s in states):
        raise ValueError("states hold different parameter names: cannot average models of different structure")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    out = {}
    for k in states[0]:
        if states[0][k].is_floating_point():
            out[k] = sum(float(wi) * s[k].double() for wi, s in zip(w, states)).to(states[0][k].dtype)
        else:
            out[k] = torch.stack([s[k] for s in states]).max(0).values
    return out


@torch.enable_grad()
def finetune(model: nn.Module, x: torch.Tensor, labels: np.ndarray, steps: int = 10, lr: float = 1e-3,
             batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A few SGD steps of cross-entropy on (pseudo-)labelled uploads, all parameters (ECAvg's cloud step)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(seed)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    for _ in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), size=min(batch_size, len(x)), replace=False))
        loss = F.cross_entropy(model(x[idx]), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()
