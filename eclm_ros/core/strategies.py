"""What the cloud coordinator does for each edge, as interchangeable strategies (in the spirit of Flower's
``flwr.server.strategy``): the coordinator asks, the strategy answers with tensors to send.

- ``Distil`` (CEMA): the cloud model adapts on each edge's uploads and distils into that edge's sub-model;
  only normalisation affine parameters go back.
- ``Compose`` (ECLM): as Distil, and the sub-model follows the environment: modules are re-scored on recent
  uploads and, when another composition fits the budget better, only the modules the edge lacks are sent.
  Trainable edges send their adapted modules up; they are integrated into the cloud model module by module.
- ``ComposeMerge`` (+ ECAvg): as Compose, and edges serving the same structure pool what they learned:
  their students are averaged (weighted by uploads) and the average is pushed back, only when frames held
  out of training say it helps.

A strategy holds the per-edge learning state and never touches ROS: the coordinator node turns its answers
into signed, versioned ModelUpdates. The benchmark drives the very same objects in-process.
"""
from __future__ import annotations

import copy
import json
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from .compose import compose, integrate, keep_shared_affine, modules_update, score_modules, spec_score
from .distill import DistillConfig, Distiller
from .merge import average, holdout_accuracy
from .models import Budget, ModularNet, SubModelSpec, derive_spec
from .norm import affine_state, load_affine, use_batch_stats
from .preprocess import batch_to_tensor
from .training import edge_budget, edge_submodel
from .updates import KIND_FULL, KIND_MODULES, KIND_NORM_AFFINE

NUM_CLASSES = 10


@dataclass(frozen=True)
class Profile:
    """An edge's capability profile (msg/DeviceProfile without ROS)."""

    trainable: bool = False
    max_params: int = 0
    max_macs: int = 0
    max_latency_ms: float = 0.0


@dataclass
class Update:
    """Tensors for one edge, what kind of update they form, and why it is sent (for the log)."""

    kind: int
    tensors: dict[str, torch.Tensor]
    submodel_spec: str
    reason: str = ""


def spec_json(cloud: ModularNet, spec: SubModelSpec) -> str:
    """The structure an edge rebuilds its model from: the cloud model's config with the chosen modules."""
    return json.dumps({**cloud.config(), "module_ids": [list(s) for s in spec.stages]}, separators=(",", ":"))


@dataclass
class EdgeSession:
    """Everything the cloud keeps for one edge."""

    profile: Profile  # the budget the sub-model was derived for (an operator's re-assembly may change it)
    spec: SubModelSpec
    spec_json: str
    distiller: Distiller
    served: dict[str, torch.Tensor]  # the full state the edge was given (with its BatchNorm statistics)
    recent: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads for module scoring
    holdout: deque = field(default_factory=lambda: deque(maxlen=256))  # uploads never trained on
    frames: int = 0
    since_compose: int = 0
    registered: Profile | None = None  # what the edge itself reports when it registers (its heartbeat)

    def current_full(self) -> dict[str, torch.Tensor]:
        """What the edge should serve now: the state it was given with the learned affine parameters."""
        return {**self.served, **affine_state(self.distiller.student)}


class Strategy:
    """The interface the coordinator asks; ``Distil`` is the base behaviour."""

    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new (or returning) edge: its sub-model, sent in full."""
        raise NotImplementedError

    def on_samples(self, edge_id: str, images: np.ndarray) -> Update | None:
        """Frames an edge uploaded (uint8 [N,28,28]); maybe an update for it."""
        raise NotImplementedError

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Module weights a trainable edge adapted itself (for structure ``spec_json``); maybe an update."""
        return None

    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        """Re-derive an edge's sub-model (its budget or environment changed)."""
        raise NotImplementedError

    def aggregate(self) -> tuple[dict[str, Update], list[str]]:
        """A round across edges: updates per edge, and what was decided (accepted or refused, and why)."""
        return {}, []

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError


class Distil(Strategy):
    """CEMA for every edge, on the sub-model its budget affords: the cloud model adapts on each edge's uploads
    and distils into that edge's sub-model; only affine parameters return."""

    def __init__(self, cloud: ModularNet, quick: bool = False, config: DistillConfig = DistillConfig(),
                 min_step_frames: int = 16, holdout_every: int = 8, seed: int = 0) -> None:
        self.cloud, self.quick, self.config = cloud, quick, config
        self.min_step_frames, self.holdout_every, self.seed = min_step_frames, holdout_every, seed
        self.sessions: dict[str, EdgeSession] = {}

    def budget(self, profile: Profile) -> Budget:
        if profile.max_params or profile.max_macs or profile.max_latency_ms:
            return Budget(profile.max_params, profile.max_macs, profile.max_latency_ms)
        return edge_budget(self.cloud)

    def _new_session(self, profile: Profile, spec: SubModelSpec) -> EdgeSession:
        student = edge_submodel(self.cloud, spec, self.quick)
        served = {k: v.clone() for k, v in student.state_dict().items()}
        distiller = Distiller(copy.deepcopy(self.cloud), student, NUM_CLASSES, self.config, seed=self.seed)
        return EdgeSession(profile, spec, spec_json(self.cloud, spec), distiller, served)

    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new edge gets the sub-model its budget affords; a returning one (same profile) resyncs to what
        the cloud has learned for it so far."""
        session = self.sessions.get(edge_id)
        if session is not None and session.registered == profile:  # re-assembled or not, the same edge
            return Update(KIND_FULL, session.current_full(), session.spec_json, "resync")
        spec = derive_spec(self.cloud, self.budget(profile))  # BudgetError when nothing fits
        self.sessions[edge_id] = session = self._new_session(profile, spec)
        session.registered = profile
        return Update(KIND_FULL, session.current_full(), session.spec_json, "registered")

    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        session = self._session(edge_id)
        recent = np.stack(session.recent) if len(session.recent) > 1 else None
        spec = compose(session.distiller.teacher, self.budget(profile), recent)
        if profile == session.profile and spec == session.spec:
            return Update(KIND_FULL, session.current_full(), session.spec_json, f"{reason}: unchanged")
        self.sessions[edge_id] = new = self._new_session(profile, spec)
        new.registered = session.registered
        new.distiller.replay = session.distiller.replay
        new.recent, new.holdout = session.recent, session.holdout
        return Update(KIND_FULL, new.current_full(), new.spec_json, f"{reason}: reassembled")

    def _session(self, edge_id: str) -> EdgeSession:
        session = self.sessions.get(edge_id)
        if session is None:
            raise KeyError(f"edge {edge_id!r} has not registered")
        return session

    def _take(self, session: EdgeSession, images: np.ndarray) -> np.ndarray:
        """Every ``holdout_every``-th upload is held out (merge checks); the rest is for learning."""
        idx = session.frames + np.arange(len(images))
        held = idx % self.holdout_every == self.holdout_every - 1 if self.holdout_every else np.zeros(len(idx), bool)
        session.holdout.extend(images[held])
        session.recent.extend(images)
        session.frames += len(images)
        session.since_compose += len(images)
        return images[~held]

    def on_samples(self, edge_id: str, images: np.ndarray) -> Update | None:
        session = self._session(edge_id)
        session.distiller.add(self._take(session, images))
        if len(session.distiller.pending) < self.min_step_frames:
            return None
        state = session.distiller.step()
        if state is None or session.profile.trainable:  # a trainable edge adapts its affine parameters itself
            return None
        return Update(KIND_NORM_AFFINE, state, session.spec_json)

    def state_dict(self) -> dict:
        return {edge: {"profile": s.profile.__dict__, "registered": (s.registered or s.profile).__dict__,
                       "spec": [list(x) for x in s.spec.stages], "served": s.served,
                       "teacher": s.distiller.teacher.state_dict(), "student": s.distiller.student.state_dict(),
                       "frames": s.frames}
                for edge, s in self.sessions.items()}

    def load_state_dict(self, state: dict) -> None:
        for edge, s in state.items():
            spec = SubModelSpec(tuple(tuple(x) for x in s["spec"]))
            session = self._new_session(Profile(**s["profile"]), spec)
            session.registered = Profile(**s["registered"])
            session.served = s["served"]
            session.distiller.teacher.load_state_dict(s["teacher"])
            session.distiller.student.load_state_dict(s["student"])
            session.frames = int(s["frames"])
            self.sessions[edge] = session


class Compose(Distil):
    """Distil, and every ``compose_every`` uploaded frames the edge's sub-model is re-composed for the
    environment its recent uploads show; a new composition sends only the modules the edge lacks.
    Trainable edges' module updates are integrated into the cloud model with weight ``integrate_weight``."""

    def __init__(self, cloud: ModularNet, *args, compose_every: int = 384, integrate_weight: float = 0.5,
                 compose_margin: float = 0.02, **kwargs) -> None:
        super().__init__(cloud, *args, **kwargs)
        self.compose_every, self.integrate_weight = compose_every, integrate_weight
        self.compose_margin = compose_margin  # a swap costs frames: only for a clearly better composition

    def on_samples(self, edge_id: str, images: np.ndarray) -> Update | None:
        update = super().on_samples(edge_id, images)
        session = self.sessions[edge_id]
        if session.since_compose >= self.compose_every and len(session.recent) >= 64:
            session.since_compose = 0
            return self._recompose(session) or update
        return update

    def _recompose(self, session: EdgeSession) -> Update | None:
        teacher = session.distiller.teacher
        scores = score_modules(teacher, np.stack(session.recent))
        proposed = derive_spec(teacher, self.budget(session.profile), scores)
        gain = spec_score(scores, teacher, proposed) - spec_score(scores, teacher, session.spec)
        if proposed == session.spec or gain < self.compose_margin:
            return None
        student = edge_submodel(self.cloud, proposed, self.quick)
        keep_shared_affine(student, affine_state(session.distiller.student))
        tensors = modules_update(student, session.spec)
        old = session.spec
        session.distiller.retarget(student)
        session.spec, session.spec_json = proposed, spec_json(self.cloud, proposed)
        session.served = {k: v.clone() for k, v in student.state_dict().items()}
        return Update(KIND_MODULES, tensors, session.spec_json,
                      f"recomposed {list(old.stages)} -> {list(proposed.stages)} for the environment "
                      f"(module score +{gain:.3f})")

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Integrate a trainable edge's adapted modules into the cloud model (and its teacher), module by module.
        Modules adapted on a structure the cloud has since replaced are refused."""
        session = self._session(edge_id)
        if spec_json != session.spec_json:
            raise ValueError(f"modules of {edge_id!r} were adapted on a structure it no longer serves")
        integrate(self.cloud, module_state, self.integrate_weight)
        integrate(session.distiller.teacher, module_state, self.integrate_weight)
        session.frames += int(frames)
        return None


class ComposeMerge(Compose):
    """Compose, and a merge round (``aggregate``) across edges that serve the same structure: the data-weighted
    average of their students is pushed back only when it beats each edge's own on frames held out of training
    (labelled by that edge's adapted teacher); otherwise it is refused and the reason reported."""

    def __init__(self, cloud: ModularNet, *args, min_gain: float = 0.0, min_holdout: int = 32, **kwargs) -> None:
        super().__init__(cloud, *args, **kwargs)
        self.min_gain, self.min_holdout = min_gain, min_holdout

    def aggregate(self) -> tuple[dict[str, Update], list[str]]:
        groups: dict[str, list[str]] = {}
        for edge, s in self.sessions.items():
            if len(s.holdout) >= self.min_holdout:
                groups.setdefault(s.spec_json, []).append(edge)
        updates, decisions = {}, []
        for spec, edges in groups.items():
            if len(edges) < 2:
                continue
            sessions = [self.sessions[e] for e in edges]
            merged = average([affine_state(s.distiller.student) for s in sessions], [s.frames for s in sessions])
            gains = []
            for s in sessions:
                frames = np.stack(s.holdout)
                with torch.no_grad():
                    labels = s.distiller.teacher(batch_to_tensor(frames)).argmax(1).numpy()
                before = holdout_accuracy(use_batch_stats(copy.deepcopy(s.distiller.student)), frames, labels)
                candidate = copy.deepcopy(s.distiller.student)
                load_affine(candidate, merged)
                after = holdout_accuracy(use_batch_stats(candidate), frames, labels)
                gains.append((before, after))
            worst = min(after - before for before, after in gains)
            summary = ", ".join(f"{e} {b:.3f}->{a:.3f}" for e, (b, a) in zip(edges, gains))
            if worst <= self.min_gain:
                decisions.append(f"merge of {edges} refused: it would not help every edge on held-out frames "
                                 f"({summary})")
                continue
            for edge, s in zip(edges, sessions):
                load_affine(s.distiller.student, merged)
                updates[edge] = Update(KIND_NORM_AFFINE, affine_state(s.distiller.student), s.spec_json,
                                       f"merged with {len(edges) - 1} edges")
            decisions.append(f"merge of {edges} accepted ({summary})")
        return updates, decisions


STRATEGIES: dict[str, type[Distil]] = {"distil": Distil, "compose": Compose, "eclm_ros": ComposeMerge}


def make_strategy(name: str, cloud: ModularNet, quick: bool = False, **kwargs) -> Distil:
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](cloud, quick, **kwargs)
