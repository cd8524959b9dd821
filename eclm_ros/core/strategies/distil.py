"""``Distil`` (CEMA): for every edge, the cloud model adapts on the edge's uploads and distils into the
sub-model its budget affords; only normalisation affine parameters go back."""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..compose import calibrated_submodel, compose
from ..description import architecture_json
from ..distill import DistillConfig, Distiller
from ..messages import KIND_FULL, KIND_NORM_AFFINE, Profile
from ..models import Budget, ModularNet, SubModelSpec, architecture, derive_spec, spec_cost
from ..norm import affine_state
from ..preprocess import Preprocessor
from .base import Cause, Strategy, Update

# Robots by the share of the cloud model's MACs per frame they afford: ``small`` (a robot with a free core;
# 16 M MACs for the default 28x28 model) and ``tiny`` (a busy Nano-class board; <= 3 M). An edge that states
# no budget is ``small``.
BUDGET_SHARES = {"small": 0.47, "tiny": 0.086}
DEFAULT_BUDGET_FRACTION = BUDGET_SHARES["small"]


def default_budget(cloud: ModularNet, fraction: float = DEFAULT_BUDGET_FRACTION) -> Budget:
    """The budget of an edge that states none (or a named one's share): a share of the cloud model's MACs."""
    return Budget(max_macs=int(spec_cost(cloud, cloud.spec)[1] * fraction))


def spec_json(cloud: ModularNet, spec: SubModelSpec) -> str:
    """The structure an edge rebuilds its model from: the cloud model's architecture with the chosen modules."""
    arch = architecture(cloud)
    return architecture_json({**arch, "config": {**arch["config"], "module_ids": [list(s) for s in spec.stages]}})


@dataclass
class EdgeSession:
    """Everything the cloud keeps for one edge."""

    profile: Profile  # the budget the sub-model was derived for (an operator's re-assembly may change it)
    registered: Profile  # what the edge itself reports when it registers (its heartbeat)
    spec: SubModelSpec | None  # None: the user's own edge model (not a sub-model)
    spec_json: str
    distiller: Distiller
    served: dict[str, torch.Tensor]  # the full state the edge was given (with its BatchNorm statistics)
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads for module scoring
    holdout: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads never trained on
    frames: int = 0
    since_compose: int = 0

    def current_full(self) -> dict[str, torch.Tensor]:
        """What the edge should serve now: the state it was given with the learned affine parameters."""
        return {**self.served, **affine_state(self.distiller.student)}


class Distil(Strategy):
    """CEMA on the sub-model each edge's budget affords, or, given ``student`` (a user's edge model, any
    classifier with normalisation layers), on that model for every edge with ``cloud`` as the teacher (any
    classifier over the same labels, with its own input description): composition needs the modular model."""

    SUMMARY = "CEMA: distillation into the sub-model of the modular cloud model each edge's budget affords"

    def __init__(self, cloud: Checkpoint, config: DistillConfig = DistillConfig(), min_step_frames: int = 16,
                 holdout_every: int = 8, seed: int = 0, budget_fraction: float = DEFAULT_BUDGET_FRACTION,
                 student: Checkpoint | None = None) -> None:
        if student is None:
            if not isinstance(cloud.model, ModularNet):
                raise ValueError(f"the cloud model must be modular (modular_net) unless an edge model is given, got "
                                 f"{type(cloud.model).__name__}")
            if cloud.calibration is None:
                raise ValueError("the cloud checkpoint carries no calibration views: retrain it with 'eclm-ros train'")
            self.calibration = Preprocessor(cloud.description).tensor(cloud.calibration)
            self.summary = self.SUMMARY
        elif cloud.description.labels != student.description.labels:
            raise ValueError(f"the teacher's labels {list(cloud.description.labels)[:5]}... differ from the edge "
                             f"model's {list(student.description.labels)[:5]}...: both must score the same classes "
                             f"in the same order (give both the same labels file)")
        else:
            self.summary = ("distillation only (CEMA): the edge model is the user's, so sub-models are not composed "
                            "and modules not merged")
        self.cloud = cloud.model
        self.student = student
        self.description = (student or cloud).description  # what edges serve and upload views of
        self.preprocess = Preprocessor(self.description)
        teacher_view = Preprocessor(cloud.description)
        self.teacher_input = self.preprocess.tensor if student is None else (
            lambda views: teacher_view.tensor(np.stack([teacher_view.view(v) for v in views])))
        self.config, self.min_step_frames, self.holdout_every, self.seed = config, min_step_frames, holdout_every, seed
        self.budget_fraction = budget_fraction
        self.sessions: dict[str, EdgeSession] = {}

    def budget(self, profile: Profile) -> Budget:
        if profile.max_params or profile.max_macs or profile.max_latency_ms:
            return Budget(profile.max_params, profile.max_macs, profile.max_latency_ms)
        return default_budget(self.cloud, self.budget_fraction)

    def _new_session(self, profile: Profile, registered: Profile, spec: SubModelSpec | None) -> EdgeSession:
        if self.student is None:
            student, structure = calibrated_submodel(self.cloud, spec, self.calibration), spec_json(self.cloud, spec)
        else:
            student, structure = copy.deepcopy(self.student.model), ""
        served = {k: v.clone() for k, v in student.state_dict().items()}
        distiller = Distiller(copy.deepcopy(self.cloud), student, self.description.num_classes, self.preprocess.tensor,
                              self.config, seed=self.seed, teacher_input=self.teacher_input)
        return EdgeSession(profile, registered, spec, structure, distiller, served)

    def _session(self, edge_id: str) -> EdgeSession:
        session = self.sessions.get(edge_id)
        if session is None:
            raise KeyError(f"edge {edge_id!r} has not registered")
        return session

    def in_sync(self, edge_id: str, profile: Profile) -> bool:
        session = self.sessions.get(edge_id)
        return session is not None and session.registered == profile

    def served_spec(self, edge_id: str) -> str:
        return self._session(edge_id).spec_json

    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new edge gets the sub-model its budget affords; a returning one (same profile) resyncs to what
        the cloud has learned for it so far."""
        session = self.sessions.get(edge_id)
        if session is not None and session.registered == profile:  # re-assembled or not, the same edge
            return Update(KIND_FULL, session.current_full(), session.spec_json, Cause.RESYNC)
        spec = None if self.student else derive_spec(self.cloud, self.budget(profile))  # BudgetError: nothing fits
        self.sessions[edge_id] = session = self._new_session(profile, profile, spec)
        return Update(KIND_FULL, session.current_full(), session.spec_json, Cause.REGISTERED)

    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        session = self._session(edge_id)
        if self.student is not None:
            return Update(KIND_FULL, session.current_full(), "", Cause.UNCHANGED,
                          "the user's edge model is not composed")
        recent = self.preprocess.tensor(np.stack(session.recent)) if len(session.recent) > 1 else None
        spec = compose(session.distiller.teacher, self.budget(profile), recent)
        if profile == session.profile and spec == session.spec:
            return Update(KIND_FULL, session.current_full(), session.spec_json, Cause.UNCHANGED, reason)
        self.sessions[edge_id] = new = self._new_session(profile, session.registered, spec)
        new.distiller.replay = session.distiller.replay
        new.recent, new.holdout = session.recent, session.holdout
        return Update(KIND_FULL, new.current_full(), new.spec_json, Cause.REASSEMBLED, reason)

    def _take(self, session: EdgeSession, views: np.ndarray) -> np.ndarray:
        """Every ``holdout_every``-th upload is held out (merge checks); the rest is for learning."""
        idx = session.frames + np.arange(len(views))
        held = idx % self.holdout_every == self.holdout_every - 1 if self.holdout_every else np.zeros(len(idx), bool)
        session.holdout.extend(views[held])
        session.recent.extend(views)
        session.frames += len(views)
        session.since_compose += len(views)
        return views[~held]

    def on_samples(self, edge_id: str, views: np.ndarray) -> Update | None:
        session = self._session(edge_id)
        session.distiller.add(self._take(session, views))
        if len(session.distiller.pending) < self.min_step_frames:
            return None
        state = session.distiller.step()
        if state is None or session.profile.trainable:  # a trainable edge adapts its affine parameters itself
            return None
        return Update(KIND_NORM_AFFINE, state, session.spec_json, Cause.DISTILLED)

    def state_dict(self) -> dict:
        return {edge: {"profile": asdict(s.profile), "registered": asdict(s.registered),
                       "spec": s.spec and [list(x) for x in s.spec.stages], "served": s.served,
                       "teacher": s.distiller.teacher.state_dict(), "student": s.distiller.student.state_dict(),
                       "frames": s.frames}
                for edge, s in self.sessions.items()}

    def load_state_dict(self, state: dict) -> None:
        for edge, s in state.items():
            spec = SubModelSpec(tuple(tuple(x) for x in s["spec"])) if s["spec"] is not None else None
            session = self._new_session(Profile(**s["profile"]), Profile(**s["registered"]), spec)
            session.served = s["served"]
            session.distiller.teacher.load_state_dict(s["teacher"])
            session.distiller.student.load_state_dict(s["student"])
            session.frames = int(s["frames"])
            self.sessions[edge] = session

