"""Accuracy bookkeeping over a stream: overall, per environment segment, rolling.

Predictions and ground truth arrive separately (the learner never sees labels) and are joined by frame index;
the benchmark and the ROS demo both use this, so their numbers are computed the same way.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Evaluator:
    predictions: dict[int, int] = field(default_factory=dict)
    truths: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # index -> (label, segment, env)

    def add_predictions(self, indices, predicted) -> None:
        for i, p in zip(indices, predicted):
            self.predictions[int(i)] = int(p)

    def add_truth(self, index: int, label: int, segment_index: int, environment: str) -> None:
        self.truths[int(index)] = (int(label), int(segment_index), environment)

    def joined(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """(frame indices, correct 0/1, segment index, environment names) for frames that have both."""
        idx = np.array(sorted(set(self.predictions) & set(self.truths)), dtype=np.int64)
        correct = np.array([self.predictions[i] == self.truths[i][0] for i in idx], dtype=np.float64)
        seg = np.array([self.truths[i][1] for i in idx], dtype=np.int64)
        envs = [self.truths[i][2] for i in idx]
        return idx, correct, seg, envs

    def accuracy(self) -> float:
        _, correct, _, _ = self.joined()
        return float(correct.mean()) if len(correct) else float("nan")

    def per_segment(self) -> dict[str, float]:
        """Accuracy per segment, in stream order, keyed "<segment>:<environment>"."""
        _, correct, seg, envs = self.joined()
        out = {}
        for s in np.unique(seg):
            mask = seg == s
            out[f"{int(s)}:{envs[int(np.argmax(mask))]}"] = float(correct[mask].mean())
        return out

    def rolling(self, window: int) -> tuple[np.ndarray, np.ndarray]:
        """(frame index, accuracy over the last ``window`` joined frames)."""
        idx, correct, _, _ = self.joined()
        if not len(correct):
            return idx, correct
        csum = np.cumsum(np.insert(correct, 0, 0.0))
        lo = np.maximum(np.arange(1, len(correct) + 1) - window, 0)
        return idx, (csum[1:] - csum[lo]) / (np.arange(1, len(correct) + 1) - lo)

    def segment_starts(self) -> list[tuple[int, str]]:
        idx, _, seg, envs = self.joined()
        return [(int(idx[i]), envs[i]) for i in range(len(idx)) if i == 0 or seg[i] != seg[i - 1]]
