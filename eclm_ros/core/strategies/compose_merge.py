"""``ComposeMerge`` (+ ECAvg), the default: as Compose, and edges serving the same structure pool what they
learned: the data-weighted average of their students is pushed back only when frames held out of training say
it helps every one of them (ECAvg's own results show averaging can hurt)."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..merge import average, holdout_accuracy
from ..messages import KIND_NORM_AFFINE
from ..norm import affine_state, load_affine, use_batch_stats
from .base import Cause, MergeDecision, Update
from .compose import Compose


class ComposeMerge(Compose):
    """A merge round (``aggregate``) across edges serving the same structure; labels of the held-out frames come
    from each edge's adapted teacher."""

    SUMMARY = Compose.SUMMARY + "; gated ECAvg merges across edges"

    def __init__(self, *args, min_gain: float = 0.0, min_holdout: int = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_gain, self.min_holdout = min_gain, min_holdout

    def aggregate(self) -> tuple[dict[str, Update], list[MergeDecision]]:
        groups: dict[str, list[str]] = {}
        for edge, s in self.sessions.items():
            if len(s.holdout) >= self.min_holdout:
                groups.setdefault(s.spec_json, []).append(edge)
        updates, decisions = {}, []
        for edges in groups.values():
            if len(edges) < 2:
                continue
            sessions = [self.sessions[e] for e in edges]
            merged = average([affine_state(s.distiller.student) for s in sessions], [s.frames for s in sessions])
            accuracy = []
            for s in sessions:
                x = self.preprocess.tensor(np.stack(s.holdout))
                with torch.no_grad():
                    labels = s.distiller.teacher(x).argmax(1).numpy()
                before = holdout_accuracy(use_batch_stats(copy.deepcopy(s.distiller.student)), x, labels)
                candidate = copy.deepcopy(s.distiller.student)
                load_affine(candidate, merged)
                accuracy.append((before, holdout_accuracy(use_batch_stats(candidate), x, labels)))
            accepted = min(after - before for before, after in accuracy) > self.min_gain
            decisions.append(MergeDecision(tuple(edges), accepted, tuple(accuracy)))
            if not accepted:
                continue
            for edge, s in zip(edges, sessions):
                load_affine(s.distiller.student, merged)
                updates[edge] = Update(KIND_NORM_AFFINE, affine_state(s.distiller.student), s.spec_json,
                                       Cause.MERGED, f"with {len(edges) - 1} edges")
        return updates, decisions
