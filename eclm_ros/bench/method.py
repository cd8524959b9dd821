"""What every benchmarked method is and what it may start from."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from ..core.checkpoint import Checkpoint
from ..core.compose import calibrated_submodel
from ..core.description import ModelDescription
from ..core.messages import Profile
from ..core.models import Budget, derive_spec
from ..core.preprocess import Preprocessor
from ..core.strategies import BUDGET_SHARES, default_budget
from ..sim.data import Dataset, fashion_mnist
from ..training import trainer


@dataclass
class Traffic:
    """Edge-cloud traffic of a method, in real encoded bytes."""

    uplink_bytes: int = 0
    downlink_bytes: int = 0
    uploaded_frames: int = 0
    updates: int = 0


class Method(Protocol):
    name: str
    traffic: Traffic

    def step(self, images: np.ndarray) -> np.ndarray:
        """Predict uint8 frames [B,H,W(,3)] with the current edge model, then learn from them."""


FIXED_MODELS = {"small": "edge_small", "tiny": "edge_tiny"}  # per budget, the model of that budget trained alone


@dataclass
class BenchContext:
    """What a method may start from: checkpoints trained on the run's data set (fresh copies per method) and
    clean training views, for a robot of one ``budget`` (``strategies.BUDGET_SHARES``)."""

    quick: bool
    seed: int
    cache_dir: Path | None = None
    dataset: Dataset = field(default_factory=fashion_mnist)
    budget: str = "small"
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget not in BUDGET_SHARES:
            raise ValueError(f"unknown budget {self.budget!r}; known: {', '.join(BUDGET_SHARES)}")

    def _loaded(self, name: str) -> Checkpoint:
        if name not in self._cache:
            if name == "edge" and self.budget != "small":  # composed for this budget, as the cloud would
                cloud = self._loaded("cloud")
                spec = derive_spec(cloud.model, self.edge_budget())
                self._cache[name] = Checkpoint(
                    calibrated_submodel(cloud.model, spec, self.to_tensor(cloud.calibration)), cloud.description)
            else:
                self._cache[name] = trainer.load(name, self.quick, self.cache_dir, self.dataset)
        return self._cache[name]

    def checkpoint(self, name: str) -> Checkpoint:
        """A fresh copy of a default model's checkpoint (``cloud``, ``edge``, ``edge_small``, ``edge_tiny``;
        ``edge`` is the sub-model this budget affords)."""
        return copy.deepcopy(self._loaded(name))

    def _model(self, name: str) -> nn.Module:
        return self.checkpoint(name).model

    def edge_budget(self) -> Budget:
        return default_budget(self._loaded("cloud").model, BUDGET_SHARES[self.budget])

    def profile(self) -> Profile:
        """What a robot of this budget registers with."""
        return Profile(max_macs=self.edge_budget().max_macs, device=self.budget)

    def cloud_model(self) -> nn.Module:
        return self._model("cloud")

    def edge_model(self) -> nn.Module:
        """The edge model: the sub-model of the cloud model this budget affords."""
        return self._model("edge")

    def edge_fixed(self) -> nn.Module:
        """The model of this budget trained alone."""
        return self._model(FIXED_MODELS[self.budget])

    @property
    def description(self) -> ModelDescription:
        return self._loaded("cloud").description

    @property
    def num_classes(self) -> int:
        return self.description.num_classes

    def to_tensor(self, views: np.ndarray) -> torch.Tensor:
        if "preprocess" not in self._cache:
            self._cache["preprocess"] = Preprocessor(self.description)
        return self._cache["preprocess"].tensor(views)

    def clean_holdout(self) -> torch.Tensor:
        """Clean TRAIN-split inputs (never test images), e.g. for EATA's Fisher information."""
        return self.to_tensor(self._loaded("cloud").calibration)


class TorchMethod:
    """An on-device method: a torch model and one function that predicts (and maybe adapts) a batch."""

    def __init__(self, name: str, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                 to_tensor: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.name, self.model, self.forward, self.to_tensor = name, model, forward, to_tensor
        self.traffic = Traffic()

    def step(self, images: np.ndarray) -> np.ndarray:
        return self.forward(self.to_tensor(images)).argmax(1).numpy()
