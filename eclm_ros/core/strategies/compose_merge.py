"""``ComposeMerge`` (+ ECAvg), the default: as Compose, and edges serving the same structure pool what they
learned: the data-weighted average of their students is pushed back only when frames held out of training say
it helps every one of them (ECAvg's own results show averaging can hurt).

A round has three steps (``merge_groups``, ``merge_check``, ``merge_apply``) joined by ``gated_merge``, so that
edges learned for on different workers (``ray_strategy``) merge as if they were in one place."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..merge import average
from ..messages import KIND_NORM_AFFINE
from .base import Cause, MergeDecision, Update
from .compose import Compose

MergeMember = tuple[str, dict[str, torch.Tensor], int]  # edge id, its student's affine state, frames learned


def gated_merge(groups: dict[str, list[MergeMember]],
                check: Callable[[list[str], dict[str, torch.Tensor]], list[tuple[float, float]]],
                apply: Callable[[list[str], dict[str, torch.Tensor]], dict[str, Update]],
                min_gain: float) -> tuple[dict[str, Update], list[MergeDecision]]:
    """Per structure served by two edges or more: their data-weighted average, checked on every edge's
    held-out frames (accuracy before, after), applied only when every edge gains more than ``min_gain``."""
    updates, decisions = {}, []
    for members in groups.values():
        if len(members) < 2:
            continue
        edges = [edge for edge, _, _ in members]
        merged = average([state for _, state, _ in members], [frames for _, _, frames in members])
        accuracy = check(edges, merged)
        accepted = min(after - before for before, after in accuracy) > min_gain
        decisions.append(MergeDecision(tuple(edges), accepted, tuple(accuracy)))
        if accepted:
            updates.update(apply(edges, merged))
    return updates, decisions


class ComposeMerge(Compose):
    """A merge round (``aggregate``) across edges serving the same structure; labels of the held-out frames come
    from each edge's adapted teacher."""

    SUMMARY = Compose.SUMMARY + "; gated ECAvg merges across edges"

    def __init__(self, *args, min_gain: float = 0.0, min_holdout: int = 32, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.min_gain, self.min_holdout = min_gain, min_holdout

    def aggregate(self) -> tuple[dict[str, Update], list[MergeDecision]]:
        return gated_merge(self.merge_groups(), self.merge_check, self.merge_apply, self.min_gain)

    def merge_groups(self) -> dict[str, list[MergeMember]]:
        """Edges with enough held-out frames, by the structure they serve."""
        groups: dict[str, list[MergeMember]] = {}
        for edge, s in self.sessions.items():
            if len(s.holdout) >= self.min_holdout:
                groups.setdefault(s.spec_json, []).append((edge, s.learner.student_state(), s.frames))
        return groups

    @torch.no_grad()
    def merge_check(self, edges: Sequence[str], merged: dict[str, torch.Tensor]) -> list[tuple[float, float]]:
        """Per edge, the held-out accuracy of its own student and of ``merged`` (batch statistics of the
        held-out frames), against its adapted teacher's labels."""
        accuracy = []
        for edge in edges:
            s = self.sessions[edge]
            x = self.preprocess.tensor(np.stack(s.holdout))
            labels = self.engine.teacher_logits(s.learner, x).argmax(1)
            net, n = s.learner.student_net, len(x)
            logits = net.forward(torch.cat([x, x]), [n, n], torch.stack([s.learner.student.params, net.flat(merged)]))
            hits = (logits.argmax(1) == torch.cat([labels, labels])).float()
            accuracy.append((float(hits[:n].mean()), float(hits[n:].mean())))
        return accuracy

    def merge_apply(self, edges: Sequence[str], merged: dict[str, torch.Tensor]) -> dict[str, Update]:
        """The merged affine parameters become each edge's student (its optimiser state kept) and its update."""
        updates = {}
        for edge in edges:
            s = self.sessions[edge]
            s.learner.student.params.copy_(s.learner.student_net.flat(merged))
            updates[edge] = Update(KIND_NORM_AFFINE, s.learner.student_state(), s.spec_json, Cause.MERGED,
                                   f"with {len(edges) - 1} edges")
        return updates
