"""Edge inference runtimes: serve a model frame by frame and take updates between two frames atomically.

An update is validated completely (names, shapes, finite values) on a copy before it replaces anything, and
the swap happens under the same lock as inference, so a frame is always answered by one whole model version:
the old one or the new one, never a mix. A failed update leaves the last good model serving.
"""
from __future__ import annotations

import copy
import threading
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .norm import affine_state, load_affine, use_ema_stats


class UpdateError(ValueError):
    """An update that cannot be applied to the model being served."""


class TorchEdgeRuntime:
    """A torch model served frame by frame, BatchNorm statistics following the stream (forward-only EMA)."""

    def __init__(self, model: nn.Module, bn_momentum: float = 0.05) -> None:
        self.bn_momentum = bn_momentum
        self._lock = threading.Lock()
        self._install(model)

    def _install(self, model: nn.Module) -> None:
        model = model.eval()
        model.requires_grad_(False)
        use_ema_stats(model, self.bn_momentum)
        self.model = model

    @torch.no_grad()
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities [N,C] for model input float32 [N,1,28,28]."""
        with self._lock:
            return self.model(torch.from_numpy(x)).softmax(1).numpy()

    def affine_templates(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in affine_state(self.model).items()}

    def state_templates(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def apply_affine(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Replace the normalisation affine parameters (CEMA's update), all or nothing."""
        staged = copy.deepcopy(self.model)
        try:
            load_affine(staged, tensors)
        except ValueError as exc:
            raise UpdateError(str(exc)) from exc
        with self._lock:
            load_affine(self.model, tensors)

    def swap(self, model: nn.Module, state: Mapping[str, np.ndarray] | None = None) -> None:
        """Serve a new model (a new sub-model structure or full weights); loaded and checked before the swap."""
        if state is not None:
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            got = {k: tuple(np.shape(v)) for k, v in state.items()}
            if expected != got:
                missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
                bad = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
                raise UpdateError(f"weights do not fit the model: missing {missing[:3]}, unexpected {extra[:3]}, "
                                  f"wrong shape {bad[:3]}")
            model.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()})
        with self._lock:
            self._install(model)
