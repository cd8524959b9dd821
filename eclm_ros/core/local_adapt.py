"""A trainable edge adapts its own sub-model (ECLM's edge side): Tent on small batches of the frames it serves,
on a copy of the model, so serving never waits for a backward pass. What it learns is served at once (its
affine parameters) and its modules are sent up for the cloud to integrate module by module."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .adapt import tent
from .models import ModularNet, submodel_module_state
from .norm import affine_state


class LocalAdapter:
    """Tent over batches of ``batch_size`` preprocessed frames [1,28,28]; one step per full batch."""

    def __init__(self, model: ModularNet, batch_size: int = 16, lr: float = 1e-3) -> None:
        if batch_size < 2:
            raise ValueError(f"Tent needs batches of at least 2 frames (batch statistics), got {batch_size}")
        self.batch_size, self.lr = batch_size, lr
        self.frames: list[np.ndarray] = []
        self.steps = 0
        self.rebase(model)

    def rebase(self, model: nn.Module) -> None:
        """Adapt from a new served model on (after a cloud update replaced it)."""
        self.model = tent.configure_model(copy.deepcopy(model))
        self.opt = tent.make_optimizer(tent.collect_params(self.model), self.lr)
        self.frames.clear()

    def add(self, x: np.ndarray) -> dict[str, torch.Tensor] | None:
        """Queue one model input; after a full batch, one entropy step: returns the new affine state to serve."""
        self.frames.append(np.array(x, dtype=np.float32, copy=True))
        if len(self.frames) < self.batch_size:
            return None
        batch = torch.from_numpy(np.stack(self.frames))
        self.frames.clear()
        tent.forward_and_adapt(batch, self.model, self.opt)
        self.steps += 1
        return affine_state(self.model)

    def module_state(self) -> dict[str, torch.Tensor]:
        """The adapted modules, keyed by cloud module id, for the cloud to integrate."""
        return submodel_module_state(self.model)
