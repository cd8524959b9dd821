"""``Distil`` (CEMA): for every edge, the cloud model adapts on the edge's uploads and distils into the
sub-model its budget affords; only normalisation affine parameters go back.

Every edge has its own adapted teacher and its own student, held as affine vectors over networks the fleet
shares (``shared_norm``): one cloud model, one network per sub-model structure. Uploads of many edges are
learned from in one batched step (``learn``), each edge's result as its own step would give it."""
from __future__ import annotations

import copy
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..compose import calibrated_submodel, compose
from ..description import architecture_json
from ..distill import DistillConfig, DistillEngine, EdgeDistill
from ..messages import KIND_FULL, KIND_NORM_AFFINE, Profile
from ..models import Budget, ModularNet, SubModelSpec, architecture, derive_spec, model_from_architecture, spec_cost
from ..preprocess import Preprocessor
from ..restyle import LabelledViews
from ..shared_norm import AffineSlot, SharedModel
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


def _no_views_reason(cloud: Checkpoint, student: Checkpoint) -> str:
    """Why a user's edge model cannot learn on the teacher's labelled calibration views ('' when it can): the
    restyle fits the uploads' spectra against the views', so both must have one shape."""
    if cloud.calibration is None or not len(cloud.calibration):
        return "the teacher checkpoint carries no calibration views"
    shape = Preprocessor(student.description).view(cloud.calibration[0]).shape
    if cloud.calibration.shape[1:] != shape:
        return (f"the teacher's calibration views are {list(cloud.calibration.shape[1:])}, the edge model's input "
                f"{list(shape)}: resized views would restyle wrongly")
    return ""


@dataclass
class SubModel:
    """A structure as edges are given it: the network every edge of this structure shares on the cloud, and
    the state it is served with (weights and calibrated BatchNorm statistics)."""

    key: str
    net: SharedModel
    served: dict[str, torch.Tensor]

    def plain(self) -> ModularNet:
        """A standalone copy as served (a re-composition cuts its modules from it)."""
        model = model_from_architecture(self.key.rpartition("#")[0])
        model.load_state_dict(self.served)
        return model


@dataclass
class EdgeSession:
    """Everything the cloud keeps for one edge."""

    profile: Profile  # the budget the sub-model was derived for (an operator's re-assembly may change it)
    registered: Profile  # what the edge itself reports when it registers (its heartbeat)
    spec: SubModelSpec | None  # None: the user's own edge model (not a sub-model)
    spec_json: str
    submodel: SubModel
    learner: EdgeDistill
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads for module scoring
    holdout: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads never trained on
    frames: int = 0
    since_compose: int = 0

    def current_full(self) -> dict[str, torch.Tensor]:
        """What the edge should serve now: the state it was given with the learned affine parameters."""
        return {**self.submodel.served, **self.learner.student_state()}


class Distil(Strategy):
    """CEMA on the sub-model each edge's budget affords, with the cloud's labelled calibration views restyled to
    each edge's conditions (``restyle``), or, given ``student`` (a user's edge model, any
    classifier with normalisation layers), on that model for every edge with ``cloud`` as the teacher (any
    classifier over the same labels, with its own input description): composition needs the modular model.
    A batched step holds at most ``step_frames`` frames (memory); more edges' steps run one after another."""

    SUMMARY = "CEMA: distillation into the sub-model of the modular cloud model each edge's budget affords"

    def __init__(self, cloud: Checkpoint, config: DistillConfig = DistillConfig(), min_step_frames: int = 16,
                 holdout_every: int = 8, seed: int = 0, budget_fraction: float = DEFAULT_BUDGET_FRACTION,
                 student: Checkpoint | None = None, step_frames: int = 2048) -> None:
        teacher_view = Preprocessor(cloud.description)
        if student is None:
            if not isinstance(cloud.model, ModularNet):
                raise ValueError(f"the cloud model must be modular (modular_net) unless an edge model is given, got "
                                 f"{type(cloud.model).__name__}")
            if cloud.calibration is None:
                raise ValueError("the cloud checkpoint carries no calibration views: retrain it with 'eclm-ros train'")
            self.calibration = teacher_view.tensor(cloud.calibration)
            why_not = ""
            self.summary = self.SUMMARY
        elif cloud.description.labels != student.description.labels:
            raise ValueError(f"the teacher's labels {list(cloud.description.labels)[:5]}... differ from the edge "
                             f"model's {list(student.description.labels)[:5]}...: both must score the same classes "
                             f"in the same order (give both the same labels file)")
        else:
            why_not = _no_views_reason(cloud, student)  # else its own views, labelled, teach it as a sub-model
            self.summary = ("distillation only (CEMA): the edge model is the user's, so sub-models are not composed "
                            "and modules not merged; " + (f"no labelled views ({why_not})" if why_not else
                                                          "the teacher's labelled views restyled to each edge"))
        source = None if why_not else LabelledViews(cloud.calibration, cloud.model, teacher_view.tensor)
        self.cloud = cloud.model
        self.student = student
        self.description = (student or cloud).description  # what edges serve and upload views of
        self.preprocess = Preprocessor(self.description)
        self.engine = DistillEngine(self.cloud, self.description.num_classes, self.preprocess.tensor, config,
                                    None if student is None else (
                                        lambda views: teacher_view.tensor(np.stack([teacher_view.view(v)
                                                                                    for v in views]))),
                                    source)
        self.min_step_frames, self.holdout_every, self.seed = min_step_frames, holdout_every, seed
        self.budget_fraction, self.step_frames = budget_fraction, step_frames
        self.sessions: dict[str, EdgeSession] = {}
        self.submodels: dict[str, SubModel] = {}  # by structure and cloud revision: shared by the edges given it
        self.revision = 0  # the cloud model's: integrating modules changes the sub-models cut from it
        self.spare = 1.0  # the share of the restyled views and extra steps the cloud affords now (``pace``)

    def budget(self, profile: Profile) -> Budget:
        if profile.max_params or profile.max_macs or profile.max_latency_ms:
            return Budget(profile.max_params, profile.max_macs, profile.max_latency_ms)
        return default_budget(self.cloud, self.budget_fraction)

    def _submodel(self, spec: SubModelSpec | None) -> SubModel:
        """The shared sub-model of this structure cut from the cloud model as it is now (built once)."""
        structure = self.description.structure if spec is None else spec_json(self.cloud, spec)  # None: a user's
        key = f"{structure}#{self.revision}"
        if key not in self.submodels:
            in_use = {s.submodel.key for s in self.sessions.values()}
            self.submodels = {k: v for k, v in self.submodels.items() if k in in_use}
            model = copy.deepcopy(self.student.model) if spec is None else \
                calibrated_submodel(self.cloud, spec, self.calibration)
            served = {k: v.clone() for k, v in model.state_dict().items()}
            self.submodels[key] = SubModel(key, SharedModel(model), served)
        return self.submodels[key]

    def _new_session(self, profile: Profile, registered: Profile, spec: SubModelSpec | None) -> EdgeSession:
        sub = self._submodel(spec)
        return EdgeSession(profile, registered, spec, sub.key.rpartition("#")[0], sub,
                           self.engine.new_edge(sub.net, self.seed))

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

    def teacher_of(self, session: EdgeSession) -> torch.nn.Module:
        """The edge's adapted teacher as a standalone model (module scoring takes one)."""
        return self.engine.teacher.materialise(session.learner.teacher.params)

    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        session = self._session(edge_id)
        if self.student is not None:
            return Update(KIND_FULL, session.current_full(), session.spec_json, Cause.UNCHANGED,
                          "the user's edge model is not composed")
        recent = self.preprocess.tensor(np.stack(session.recent)) if len(session.recent) > 1 else None
        spec = compose(self.teacher_of(session) if recent is not None else self.cloud, self.budget(profile), recent)
        if profile == session.profile and spec == session.spec:
            return Update(KIND_FULL, session.current_full(), session.spec_json, Cause.UNCHANGED, reason)
        self.sessions[edge_id] = new = self._new_session(profile, session.registered, spec)
        new.learner.replay = session.learner.replay
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

    def learn(self, batches: Sequence[tuple[str, np.ndarray]]) -> dict[str, Update]:
        """Queue every batch with its edge; edges with enough new frames take one step each, batched together
        (at most ``step_frames`` frames a pass). A trainable edge adapts its affine parameters itself: it gets
        no distilled ones."""
        unknown = sorted({edge for edge, _ in batches if edge not in self.sessions})
        if unknown:
            raise KeyError(f"edges {unknown} have not registered")
        for edge_id, views in batches:
            session = self.sessions[edge_id]
            session.learner.add(self._take(session, views))
        ready = [e for e in dict.fromkeys(edge for edge, _ in batches)
                 if len(self.sessions[e].learner.pending) >= self.min_step_frames]
        updates = {}
        for group in self._passes(ready):
            for edge_id, state in zip(group, self.engine.step([self.sessions[e].learner for e in group], self.spare)):
                session = self.sessions[edge_id]
                if state is not None and not session.profile.trainable:
                    updates[edge_id] = Update(KIND_NORM_AFFINE, state, session.spec_json, Cause.DISTILLED)
        return updates

    def pace(self, spare: float) -> None:
        """The restyled views and the extra steps on them (``source_per_step``, ``source_steps``) scale with
        ``spare``: all of them for a cloud that keeps up, none for one with a backlog, which learns from more
        uploads with CEMA's losses instead."""
        self.spare = min(max(float(spare), 0.0), 1.0)

    def _passes(self, edges: list[str]) -> list[list[str]]:
        """Edges in groups whose steps (new frames plus replayed ones) hold at most ``step_frames`` frames."""
        groups, frames = [[]], 0
        for edge in edges:
            size = len(self.sessions[edge].learner.pending) + self.engine.cfg.replay_per_step
            if groups[-1] and frames + size > self.step_frames:
                groups.append([])
                frames = 0
            groups[-1].append(edge)
            frames += size
        return [g for g in groups if g]

    def state_dict(self) -> dict:
        """Per edge its affine vectors and counts; once, the served states of the structures in use and (for the
        modular model, which integration changes) the cloud model."""
        edges = {edge: {"profile": asdict(s.profile), "registered": asdict(s.registered),
                        "spec": s.spec and [list(x) for x in s.spec.stages], "submodel": s.submodel.key,
                        "teacher": s.learner.teacher.params.clone(), "student": s.learner.student.params.clone(),
                        "frames": s.frames}
                 for edge, s in self.sessions.items()}
        served = {s.submodel.key: s.submodel.served for s in self.sessions.values()}
        return {"cloud": self.cloud.state_dict() if self.student is None else None, "served": served, "edges": edges}

    def load_state_dict(self, state: dict) -> None:
        if state["cloud"] is not None:
            self.cloud.load_state_dict(state["cloud"])
            self.engine.teacher.load_weights(self.cloud)
        for key, served in state["served"].items():
            model = copy.deepcopy(self.student.model) if self.student else \
                model_from_architecture(key.rpartition("#")[0])
            model.load_state_dict(served)
            self.submodels[key] = SubModel(key, SharedModel(model), served)
        for edge, s in state["edges"].items():
            sub = self.submodels[s["submodel"]]
            spec = SubModelSpec(tuple(tuple(x) for x in s["spec"])) if s["spec"] is not None else None
            learner = self.engine.new_edge(sub.net, self.seed)
            learner.teacher, learner.student = AffineSlot(s["teacher"].clone()), AffineSlot(s["student"].clone())
            self.sessions[edge] = EdgeSession(Profile(**s["profile"]), Profile(**s["registered"]), spec,
                                              sub.key.rpartition("#")[0], sub, learner, frames=int(s["frames"]))
        self.revision = 1 + max((int(k.rpartition("#")[2]) for k in self.submodels), default=-1)

