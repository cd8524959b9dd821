"""What the cloud coordinator does for each edge, as interchangeable strategies (in the spirit of Flower's
``flwr.server.strategy``): the coordinator asks, the strategy answers with tensors to send.

A strategy holds the per-edge learning state and never touches ROS: the coordinator node turns its answers
into signed, versioned ModelUpdates.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .distill import DistillConfig, Distiller
from .models import Budget, ModularNet, derive_spec
from .norm import affine_state
from .training import edge_budget, edge_submodel
from .updates import KIND_FULL, KIND_NORM_AFFINE


@dataclass(frozen=True)
class Profile:
    """An edge's capability profile (msg/DeviceProfile without ROS)."""

    trainable: bool = False
    max_params: int = 0
    max_macs: int = 0
    max_latency_ms: float = 0.0


@dataclass
class Update:
    """Tensors for one edge, and what kind of update they form."""

    kind: int
    tensors: dict[str, torch.Tensor]
    submodel_spec: str


class Strategy(Protocol):
    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new (or returning) edge: its sub-model, sent in full."""

    def on_samples(self, edge_id: str, images: np.ndarray) -> Update | None:
        """Frames an edge uploaded; maybe an update for it."""

    def state_dict(self) -> dict:
        """Everything needed to resume after a restart."""

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class _EdgeSession:
    profile: Profile
    spec_json: str
    distiller: Distiller
    served: dict[str, torch.Tensor]  # the full state the edge was given (with its BatchNorm statistics)

    def current_full(self) -> dict[str, torch.Tensor]:
        """What the edge should serve now: the state it was given with the learned affine parameters."""
        return {**self.served, **affine_state(self.distiller.student)}


@dataclass
class DistilStrategy:
    """CEMA for every edge, on the sub-model its budget affords (ECLM composition for the budget): the cloud
    model adapts on each edge's uploads and distils into that edge's sub-model; only affine parameters return."""

    cloud: ModularNet
    quick: bool = False
    config: DistillConfig = DistillConfig()
    min_step_frames: int = 16
    sessions: dict[str, _EdgeSession] = field(default_factory=dict)

    def _budget(self, profile: Profile) -> Budget:
        if profile.max_params or profile.max_macs or profile.max_latency_ms:
            return Budget(profile.max_params, profile.max_macs, profile.max_latency_ms)
        return edge_budget(self.cloud)

    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new edge gets the sub-model its budget affords; a returning one (same profile) resyncs to what
        the cloud has learned for it so far."""
        session = self.sessions.get(edge_id)
        if session is not None and session.profile == profile:
            return Update(KIND_FULL, session.current_full(), session.spec_json)
        spec = derive_spec(self.cloud, self._budget(profile))  # BudgetError when nothing fits
        student = edge_submodel(self.cloud, spec, self.quick)
        spec_json = json.dumps({**self.cloud.config(), "module_ids": [list(s) for s in spec.stages]})
        served = {k: v.clone() for k, v in student.state_dict().items()}
        self.sessions[edge_id] = _EdgeSession(profile, spec_json,
                                              Distiller(copy.deepcopy(self.cloud), student, 10, self.config), served)
        return Update(KIND_FULL, served, spec_json)

    def on_samples(self, edge_id: str, images: np.ndarray) -> Update | None:
        session = self.sessions.get(edge_id)
        if session is None:
            raise KeyError(f"edge {edge_id!r} has not registered")
        session.distiller.add(images)
        if len(session.distiller.pending) < self.min_step_frames:
            return None
        state = session.distiller.step()
        return None if state is None else Update(KIND_NORM_AFFINE, state, session.spec_json)

    def state_dict(self) -> dict:
        return {edge: {"profile": s.profile.__dict__, "spec": s.spec_json, "served": s.served,
                       "teacher": s.distiller.teacher.state_dict(), "student": s.distiller.student.state_dict()}
                for edge, s in self.sessions.items()}

    def load_state_dict(self, state: dict) -> None:
        for edge, s in state.items():
            self.register(edge, Profile(**s["profile"]))
            session = self.sessions[edge]
            if session.spec_json != s["spec"]:
                raise ValueError(f"saved state of {edge!r} is for another model structure")
            session.served = s["served"]
            session.distiller.teacher.load_state_dict(s["teacher"])
            session.distiller.student.load_state_dict(s["student"])
