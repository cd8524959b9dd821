"""CEMA's cloud side: the strong model adapts on what edges upload and teaches the edge model.

The teacher (cloud model) minimises entropy on uploaded frames, each weighted by 1/exp(E - E_max) so confident
frames count more. The student (the cloud's copy of an edge model) learns from the teacher with
3 * weighted entropy + 3 * T^2 * KL(teacher || student) + 1 * CE(teacher pseudo-label), on normalisation affine
parameters only, over the new uploads plus replayed older ones (a FIFO buffer), so what it learned in one
environment is not forgotten in the next. What goes back to the edge is only the student's affine state.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, replace

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .adapt.tent import collect_params, configure_model, softmax_entropy
from .norm import affine_state


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


class ReplayBuffer:
    """FIFO of uploaded frames (uint8), sampled uniformly."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.frames: deque[np.ndarray] = deque(maxlen=capacity)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.frames)

    def add(self, images: np.ndarray) -> None:
        self.frames.extend(images)

    def sample(self, n: int) -> np.ndarray:
        idx = self.rng.choice(len(self.frames), size=min(n, len(self.frames)), replace=False)
        return np.stack([self.frames[i] for i in idx])


def confidence_weights(entropy: torch.Tensor, e_max: float) -> torch.Tensor:
    """1/exp(E - E_max) for reliable frames (E < E_max), 0 otherwise."""
    return torch.where(entropy < e_max, torch.exp(-(entropy - e_max)), torch.zeros_like(entropy)).detach()


class Distiller:
    """One edge's teacher-student pair on the cloud. ``to_tensor`` turns uploaded uint8 views into model input
    (the replay buffer keeps the compact views)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, num_classes: int,
                 to_tensor: Callable[[np.ndarray], torch.Tensor], config: DistillConfig = DistillConfig(),
                 seed: int = 0, teacher_input: Callable[[np.ndarray], torch.Tensor] | None = None) -> None:
        self.cfg = config
        self.to_tensor = to_tensor
        self.teacher_input = teacher_input or to_tensor  # a teacher with its own input size and normalisation
        self.teacher = configure_model(teacher)
        teacher_params = collect_params(self.teacher)
        if not teacher_params:  # a teacher without normalisation layers teaches as it is
            self.cfg = replace(config, adapt_teacher=False)
        self.student = configure_model(student)
        self.e_max = config.e_max_factor * math.log(num_classes)
        self.opt_teacher = torch.optim.SGD(teacher_params, lr=config.teacher_lr, momentum=config.momentum) \
            if self.cfg.adapt_teacher else None
        self.opt_student = torch.optim.SGD(collect_params(self.student), lr=config.student_lr,
                                           momentum=config.momentum)
        self.pending: deque[np.ndarray] = deque(maxlen=config.queue)
        self.replay = ReplayBuffer(config.replay_size, seed)
        self.steps = 0

    def retarget(self, student: nn.Module) -> None:
        """Teach a new student structure (a re-composed sub-model); the teacher, what it learned and the
        replay buffer carry over."""
        self.student = configure_model(student)
        self.opt_student = torch.optim.SGD(collect_params(self.student), lr=self.cfg.student_lr,
                                           momentum=self.cfg.momentum)

    def add(self, images: np.ndarray) -> None:
        """Queue uploaded frames (uint8 [N,H,W]) for the next step."""
        self.pending.extend(images)

    def _batch(self) -> np.ndarray | None:
        new = np.stack(self.pending) if self.pending else None
        self.pending.clear()
        if new is not None:
            self.replay.add(new)
        if len(self.replay) < self.cfg.replay_min:
            return new
        if new is None:
            return self.replay.sample(self.cfg.replay_only)
        return np.concatenate([new, self.replay.sample(self.cfg.replay_per_step)])

    @torch.enable_grad()
    def step(self) -> dict[str, torch.Tensor] | None:
        """Adapt the teacher, distil into the student; returns the student's affine state (None: no data)."""
        images = self._batch()
        if images is None or len(images) < 2:
            return None
        x = self.to_tensor(images)
        t_logits = self.teacher(x if self.teacher_input is self.to_tensor else self.teacher_input(images))
        if self.cfg.adapt_teacher:
            ent = softmax_entropy(t_logits)
            loss = (ent * confidence_weights(ent, self.e_max)).mean()
            loss.backward()
            self.opt_teacher.step()
            self.opt_teacher.zero_grad(set_to_none=True)
        t_logits = t_logits.detach()
        s_logits = self.student(x)
        s_ent = softmax_entropy(s_logits)
        T = self.cfg.temperature
        loss = (self.cfg.entropy_weight * (s_ent * confidence_weights(s_ent, self.e_max)).mean()
                + self.cfg.kl_weight * T * T * F.kl_div(F.log_softmax(s_logits / T, 1), F.softmax(t_logits / T, 1),
                                                        reduction="batchmean")
                + self.cfg.ce_weight * F.cross_entropy(s_logits, t_logits.argmax(1)))
        loss.backward()
        self.opt_student.step()
        self.opt_student.zero_grad(set_to_none=True)
        self.steps += 1
        return affine_state(self.student)
