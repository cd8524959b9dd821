"""CEMA's cloud side: the strong model adapts on what edges upload and teaches the edge model.

The teacher (cloud model) minimises entropy on uploaded frames, each weighted by 1/exp(E - E_max) so confident
frames count more. The student (the cloud's copy of an edge model) learns from the teacher with
3 * weighted entropy + 3 * T^2 * KL(teacher || student) + 1 * CE(teacher pseudo-label), on normalisation affine
parameters only, over the new uploads plus replayed older ones (a FIFO buffer), so what it learned in one
environment is not forgotten in the next. What goes back to the edge is only the student's affine state.

Beyond CEMA, given ``source`` (clean views the cloud knows the labels of), teacher and student also learn
``source_weight`` * CE on those views restyled to the edge's new uploads (``restyle``), and the student takes
``source_steps`` more steps on such views alone: labels under the edge's own conditions, where entropy and a
teacher adapting on the same frames have none (harsh world, severity 5, small robot, seed 0: 69.7 % with CEMA's
losses alone; swapped views with 0 extra steps 72.3 %, 8 steps 73.8 %; fitted and swapped views with 8 steps
75.4 %, 16 steps 76.3 %).

For a fleet, every edge has its own teacher and student, but not its own copies of the networks: both are
``SharedModel``s (one teacher for all edges, one student per sub-model structure) and an edge holds only its
affine vectors, their momentum and its frames (``EdgeDistill``). ``DistillEngine.step`` runs any number of
edges' steps as one batch through the shared networks; each edge's result is the one its own step would give.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapt.tent import softmax_entropy
from .restyle import LabelledViews, restyle
from .shared_norm import AffineSlot, SharedModel


@dataclass(frozen=True)
class DistillConfig:
    """CEMA's settings; learning rates are scaled for 28x28 inputs and ~100k-parameter models (the paper's
    2.5e-4 / 2.5e-3 are for ResNet-101 / ResNet-18 on ImageNet)."""

    teacher_lr: float = 1e-3
    student_lr: float = 1e-2
    momentum: float = 0.9
    e_max_factor: float = 0.4
    entropy_weight: float = 3.0
    kl_weight: float = 3.0
    ce_weight: float = 1.0
    temperature: float = 1.0
    replay_size: int = 10_000
    replay_min: int = 256
    replay_per_step: int = 96
    replay_only: int = 128
    queue: int = 32 * 64
    adapt_teacher: bool = True
    source_per_step: int = 64
    source_weight: float = 3.0
    source_steps: int = 16


class ReplayBuffer:
    """FIFO of uploaded frames (uint8), sampled uniformly. One array that grows to ``capacity`` frames and then
    wraps (no object per frame: a fleet keeps thousands of these)."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.data: np.ndarray | None = None
        self.start = self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, images: np.ndarray) -> None:
        images = images[-self.capacity:]
        if self.data is None:
            self.data = np.empty((0, *images.shape[1:]), images.dtype)
        if len(self.data) < self.capacity and self.count + len(images) > len(self.data):  # grow, oldest first
            grown = np.empty((min(self.capacity, max(2 * len(self.data), self.count + len(images))),
                              *images.shape[1:]), images.dtype)
            grown[:self.count] = self._ordered()
            self.data, self.start = grown, 0
        for image in images:
            self.data[(self.start + self.count) % len(self.data)] = image
            if self.count < len(self.data):
                self.count += 1
            else:
                self.start = (self.start + 1) % len(self.data)

    def _ordered(self) -> np.ndarray:
        idx = (self.start + np.arange(self.count)) % max(len(self.data), 1)
        return self.data[idx]

    def sample(self, n: int) -> np.ndarray:
        idx = self.rng.choice(self.count, size=min(n, self.count), replace=False)
        return self.data[(self.start + idx) % len(self.data)]

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.nbytes


def confidence_weights(entropy: torch.Tensor, e_max: float) -> torch.Tensor:
    """1/exp(E - E_max) for reliable frames (E < E_max), 0 otherwise."""
    return torch.where(entropy < e_max, torch.exp(-(entropy - e_max)), torch.zeros_like(entropy)).detach()


@dataclass
class EdgeDistill:
    """What the cloud learns for one edge: its teacher's and student's affine parameters (in ``teacher_net`` and
    ``student_net``, shared with other edges), the frames waiting for its next step and its replay buffer."""

    student_net: SharedModel
    teacher: AffineSlot
    student: AffineSlot
    replay: ReplayBuffer
    pending: deque = field(default_factory=deque)
    fresh: np.ndarray | None = None  # the new uploads of the last step (their conditions are the edge's now)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)  # its own: batching changes nothing
    steps: int = 0

    def add(self, images: np.ndarray) -> None:
        """Queue uploaded frames (uint8 [N,H,W]) for the next step."""
        self.pending.extend(images)

    def retarget(self, student_net: SharedModel, student: AffineSlot) -> None:
        """Teach a new student structure (a re-composed sub-model); the teacher, what it learned and the replay
        buffer carry over."""
        self.student_net, self.student = student_net, student

    def student_state(self) -> dict[str, torch.Tensor]:
        """The student's affine parameters by name (what an update carries)."""
        return self.student_net.named(self.student.params)

    def take_batch(self, config: DistillConfig) -> np.ndarray | None:
        """The frames of the next step: the new uploads plus replayed ones (only replayed ones when nothing is
        new, once the buffer holds enough); None when there is nothing to learn from."""
        new = np.stack(self.pending) if self.pending else None
        self.pending.clear()
        if new is not None:
            self.replay.add(new)
            self.fresh = new
        if len(self.replay) < config.replay_min:
            return new
        if new is None:
            return self.replay.sample(config.replay_only)
        return np.concatenate([new, self.replay.sample(config.replay_per_step)])

    @property
    def nbytes(self) -> int:
        """Memory this edge holds (its vectors and frames; the shared networks are not its own)."""
        pending = sum(f.nbytes for f in self.pending)
        return self.teacher.nbytes + self.student.nbytes + self.replay.nbytes + pending


def _per_edge_mean(values: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Each edge's mean of its frames' values, summed over the edges: every edge's gradient is that of its own
    mean (the losses of one edge's step)."""
    return sum(part.mean() for part in torch.split(values, list(sizes)))


def _by_student(edges: Sequence[EdgeDistill], active: list[int]) -> list[tuple[SharedModel, list[int]]]:
    """The active edges grouped by the student network they share: (network, their rows in ``active``)."""
    groups: dict[int, tuple[SharedModel, list[int]]] = {}
    for row, i in enumerate(active):
        groups.setdefault(id(edges[i].student_net), (edges[i].student_net, []))[1].append(row)
    return list(groups.values())


class DistillEngine:
    """CEMA's steps for many edges at once over one shared teacher and shared students. ``to_tensor`` turns
    uploaded uint8 views into model input (the replay buffers keep the compact views); ``teacher_input`` does
    it for a teacher with its own input size and normalisation. ``source``: labelled clean views (of the
    student's description) to restyle, or None (CEMA as published)."""

    def __init__(self, teacher: nn.Module, num_classes: int, to_tensor: Callable[[np.ndarray], torch.Tensor],
                 config: DistillConfig = DistillConfig(),
                 teacher_input: Callable[[np.ndarray], torch.Tensor] | None = None,
                 source: LabelledViews | None = None) -> None:
        self.teacher = SharedModel(teacher)
        self.cfg = config if self.teacher.size else replace(config, adapt_teacher=False)  # teaches as it is
        self.to_tensor = to_tensor
        self.teacher_input = teacher_input or to_tensor
        self.e_max = config.e_max_factor * math.log(num_classes)
        self.source = source if source is not None and config.source_per_step and config.source_weight else None

    def _restyled(self, edges: Sequence[EdgeDistill], k: int) -> tuple[np.ndarray, torch.Tensor]:
        """Per edge, ``k`` labelled views in the conditions of its new uploads, and their labels."""
        views, labels = self.source.views, self.source.labels
        picks = [e.rng.integers(0, len(views), k) for e in edges]
        styled = np.concatenate([restyle(views[p], e.fresh, self.source.power, e.rng) for p, e in zip(picks, edges)])
        return styled, torch.as_tensor(np.concatenate([labels[p] for p in picks]), dtype=torch.long)

    def _rows_of(self, source: tuple[np.ndarray, torch.Tensor], rows: list[int],
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The restyled views (as model input) and labels of the edges at ``rows`` of a step's active edges."""
        return (self.to_tensor(np.concatenate([source[0][r * k:(r + 1) * k] for r in rows])),
                torch.cat([source[1][r * k:(r + 1) * k] for r in rows]))

    def new_edge(self, student_net: SharedModel, seed: int = 0) -> EdgeDistill:
        return EdgeDistill(student_net, self.teacher.slot(), student_net.slot(),
                           ReplayBuffer(self.cfg.replay_size, seed), deque(maxlen=self.cfg.queue),
                           rng=np.random.default_rng([seed, 1]))

    @torch.no_grad()
    def teacher_logits(self, edge: EdgeDistill, x: torch.Tensor) -> torch.Tensor:
        """The edge's adapted teacher on model inputs ``x`` (statistics of ``x`` itself)."""
        return self.teacher.forward(x, [len(x)], edge.teacher.params[None])

    @torch.enable_grad()
    def step(self, edges: Sequence[EdgeDistill], spare: float = 1.0) -> list[dict[str, torch.Tensor] | None]:
        """One step for each edge (adapt its teacher, distil into its student) on its own frames, then the extra
        steps on restyled labelled views alone; per edge its student's affine state, or None when it had nothing
        to learn from. ``spare`` (0-1) scales the restyled views and the extra steps: what a busy cloud affords."""
        batches = [e.take_batch(self.cfg) for e in edges]
        active = [i for i, b in enumerate(batches) if b is not None and len(b) >= 2]
        if not active:
            return [None] * len(edges)
        images = np.concatenate([batches[i] for i in active])
        sizes = [len(batches[i]) for i in active]
        x = self.to_tensor(images)
        k = round(self.cfg.source_per_step * spare) if self.source is not None else 0
        source = self._restyled([edges[i] for i in active], k) if k else None
        t_table = torch.stack([edges[i].teacher.params for i in active])
        t_table.requires_grad_(self.cfg.adapt_teacher)
        t_logits = self.teacher.forward(x if self.teacher_input is self.to_tensor else self.teacher_input(images),
                                        sizes, t_table)
        if self.cfg.adapt_teacher:
            ent = softmax_entropy(t_logits)
            loss = _per_edge_mean(ent * confidence_weights(ent, self.e_max), sizes)
            if source is not None:
                source_sizes = [k] * len(active)
                loss = loss + self.cfg.source_weight * _per_edge_mean(F.cross_entropy(
                    self.teacher.forward(self.teacher_input(source[0]), source_sizes, t_table), source[1],
                    reduction="none"), source_sizes)
            loss.backward()
            for row, i in enumerate(active):
                edges[i].teacher.sgd(t_table.grad[row], self.cfg.teacher_lr, self.cfg.momentum)
        t_logits = t_logits.detach()
        starts = np.concatenate([[0], np.cumsum(sizes)])
        groups = _by_student(edges, active)
        for net, rows in groups:
            self._distil(net, [edges[active[r]] for r in rows],
                         torch.cat([x[starts[r]:starts[r + 1]] for r in rows]),
                         torch.cat([t_logits[starts[r]:starts[r + 1]] for r in rows]), [sizes[r] for r in rows],
                         None if source is None else self._rows_of(source, rows, k))
        for _ in range(round(self.cfg.source_steps * spare) if source is not None else 0):
            source = self._restyled([edges[i] for i in active], k)
            for net, rows in groups:
                self._learn_source(net, [edges[active[r]] for r in rows], *self._rows_of(source, rows, k))
        for i in active:
            edges[i].steps += 1
        return [edges[i].student_state() if i in active else None for i in range(len(edges))]

    def _distil(self, net: SharedModel, edges: list[EdgeDistill], x: torch.Tensor, t_logits: torch.Tensor,
                sizes: list[int], source: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        table = torch.stack([e.student.params for e in edges]).requires_grad_(True)
        s_logits = net.forward(x, sizes, table)
        s_ent = softmax_entropy(s_logits)
        T = self.cfg.temperature
        kl = F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1), reduction="none").sum(1)
        ce = F.cross_entropy(s_logits, t_logits.argmax(1), reduction="none")
        loss = (self.cfg.entropy_weight * _per_edge_mean(s_ent * confidence_weights(s_ent, self.e_max), sizes)
                + self.cfg.kl_weight * T * T * _per_edge_mean(kl, sizes)
                + self.cfg.ce_weight * _per_edge_mean(ce, sizes))
        if source is not None:
            loss = loss + self._source_loss(net, table, *source)
        loss.backward()
        for row, edge in enumerate(edges):
            edge.student.sgd(table.grad[row], self.cfg.student_lr, self.cfg.momentum)

    def _source_loss(self, net: SharedModel, table: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``source_weight`` * each edge's mean CE on its restyled labelled views (as many each)."""
        sizes = [len(y) // len(table)] * len(table)
        return self.cfg.source_weight * _per_edge_mean(F.cross_entropy(net.forward(x, sizes, table), y,
                                                                       reduction="none"), sizes)

    def _learn_source(self, net: SharedModel, edges: list[EdgeDistill], x: torch.Tensor, y: torch.Tensor) -> None:
        """A student step on restyled labelled views alone."""
        table = torch.stack([e.student.params for e in edges]).requires_grad_(True)
        self._source_loss(net, table, x, y).backward()
        for row, edge in enumerate(edges):
            edge.student.sgd(table.grad[row], self.cfg.student_lr, self.cfg.momentum)


class Distiller:
    """One teacher-student pair (the benchmark's CEMA, one edge): an engine with a single edge."""

    def __init__(self, teacher: nn.Module, student: nn.Module, num_classes: int,
                 to_tensor: Callable[[np.ndarray], torch.Tensor], config: DistillConfig = DistillConfig(),
                 seed: int = 0, teacher_input: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        self.engine = DistillEngine(teacher, num_classes, to_tensor, config, teacher_input)
        self.edge = self.engine.new_edge(SharedModel(student), seed)

    def add(self, images: np.ndarray) -> None:
        self.edge.add(images)

    def step(self) -> dict[str, torch.Tensor] | None:
        """Adapt the teacher, distil into the student; returns the student's affine state (None: no data)."""
        return self.engine.step([self.edge])[0]

    @property
    def teacher(self) -> nn.Module:
        """The adapted teacher as a standalone model (a copy)."""
        return self.engine.teacher.materialise(self.edge.teacher.params)

    @property
    def student(self) -> nn.Module:
        """The student as a standalone model (a copy)."""
        return self.edge.student_net.materialise(self.edge.student.params)
