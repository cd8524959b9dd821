"""The interface the cloud coordinator asks (in the spirit of Flower's ``flwr.server.strategy``): a strategy
holds the per-edge learning state and answers with updates; the coordinator turns them into signed, versioned
messages. A strategy never touches ROS or a transport."""
from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..messages import Profile


class Cause(enum.Enum):
    """Why an update is sent (for counters and the log; the coordinator never parses text)."""

    REGISTERED = "registered"
    RESYNC = "resync"
    DISTILLED = "distilled"
    RECOMPOSED = "recomposed"
    REASSEMBLED = "reassembled"
    UNCHANGED = "unchanged"
    MERGED = "merged"


@dataclass
class Update:
    """Tensors for one edge, the kind of update they form, the structure they belong to, and why."""

    kind: int
    tensors: dict[str, torch.Tensor]
    submodel_spec: str
    cause: Cause
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.cause.value}{': ' + self.detail if self.detail else ''}"


@dataclass(frozen=True)
class MergeDecision:
    """One merge round's verdict for a group of edges, with each edge's held-out accuracy before and after."""

    edges: tuple[str, ...]
    accepted: bool
    accuracy: tuple[tuple[float, float], ...]

    def __str__(self) -> str:
        summary = ", ".join(f"{e} {b:.3f}->{a:.3f}" for e, (b, a) in zip(self.edges, self.accuracy))
        verdict = "accepted" if self.accepted else "refused: it would not help every edge on held-out frames"
        return f"merge of {list(self.edges)} {verdict} ({summary})"


class ModulesRefused(ValueError):
    """A trainable edge's modules that the cloud will not integrate (and why)."""


class Strategy(ABC):
    """What the coordinator may ask of a strategy; nothing else of it is read from outside.

    Learning is asked for many edges at once (``learn``), so a strategy can batch their work. A strategy may
    spread edges over ``lanes`` (workers that learn in parallel; ``lane`` says whose an edge is) and, when
    ``concurrent``, be asked from several threads without the coordinator's lock."""

    summary: str = ""  # what it does with these models, for the start-up log and /diagnostics
    lanes: int = 1
    concurrent: bool = False

    def lane(self, edge_id: str) -> int:
        """The lane (worker) that learns for this edge."""
        return 0

    def close(self) -> None:
        """Release what the strategy started (workers); it is not used afterwards."""

    @abstractmethod
    def register(self, edge_id: str, profile: Profile) -> Update:
        """A new (or returning) edge: its model, sent in full."""

    @abstractmethod
    def in_sync(self, edge_id: str, profile: Profile) -> bool:
        """Whether the edge is known with this profile (a heartbeat needs no update)."""

    @abstractmethod
    def served_spec(self, edge_id: str) -> str:
        """The structure (architecture JSON) the edge should be serving."""

    @abstractmethod
    def learn(self, batches: Sequence[tuple[str, np.ndarray]]) -> dict[str, Update]:
        """Model views edges uploaded (edge id, uint8 [N,H,W] or [N,H,W,3]), in arrival order; the updates
        they lead to, per edge. KeyError (nothing learned) when an edge has not registered."""

    def pace(self, spare: float) -> None:
        """How much optional extra learning the cloud can afford for the next round (1: all, 0: none; the
        coordinator's backlog says), so a busy cloud learns from more frames instead of more from fewer."""

    def on_samples(self, edge_id: str, views: np.ndarray) -> Update | None:
        """One edge's upload; maybe an update for it."""
        return self.learn([(edge_id, views)]).get(edge_id)

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Module weights a trainable edge adapted itself (for structure ``spec_json``); maybe an update.
        Raises ModulesRefused when they cannot be integrated."""
        raise ModulesRefused(f"{type(self).__name__} does not integrate modules")

    @abstractmethod
    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        """Re-derive an edge's model (its budget or environment changed); BudgetError if nothing fits."""

    def aggregate(self) -> tuple[dict[str, Update], list[MergeDecision]]:
        """A round across edges: updates per edge, and what was decided."""
        return {}, []

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything learned per edge, for the coordinator's persistent state."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        ...
