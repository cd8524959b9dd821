"""Tent (Wang et al., ICLR 2021): test-batch BN statistics, one entropy-minimisation step per batch on the
normalisation affine parameters only."""
from __future__ import annotations

import torch
from torch import nn

from ..norm import affine_params, use_batch_stats


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy of the softmax, in nats."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure_model(model: nn.Module) -> nn.Module:
    """Train mode for batch statistics; gradients only for normalisation affine parameters."""
    model.train()
    model.requires_grad_(False)
    use_batch_stats(model)
    for p in affine_params(model).values():
        p.requires_grad_(True)
    return model


def collect_params(model: nn.Module) -> list[nn.Parameter]:
    return list(affine_params(model).values())


def make_optimizer(params: list[nn.Parameter], lr: float = 1e-3) -> torch.optim.Optimizer:
    """Adam 1e-3, Tent's CIFAR setting (methods.md)."""
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))


@torch.enable_grad()
def forward_and_adapt(x: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """Predict on the batch, then take one entropy step; the returned outputs precede the update."""
    outputs = model(x)
    loss = softmax_entropy(outputs).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return outputs.detach()
