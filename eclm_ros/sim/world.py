"""The shifting camera world: an environment schedule turned into an endless, reproducible frame stream.

A schedule is a list of segments (corruption, severity, length, gradual transition); a ``mixed`` segment draws
each frame's corruption at random (the mixed-domain stream, where per-batch statistics fail). The stream draws
test images in a seeded order and corrupts them for the segment each frame falls in, with the strengths of its
world (``mild``: CIFAR-C's, ``harsh``: ImageNet-C's; see ``corruptions``). Ground truth travels apart
from the frame (``Truth``): the learner gets only pixels, the evaluator joins the two by frame index.
Frame ``t`` depends only on (seed, t), so any part of the stream can be regenerated exactly.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .corruptions import CORRUPTIONS, WORLDS, corrupt

MIXED = "mixed"  # a segment whose every frame has its own corruption, drawn from CORRUPTIONS


class ScheduleError(ValueError):
    """A schedule that cannot be built or parsed."""


@dataclass(frozen=True)
class Segment:
    """``length`` frames of one environment; the first ``transition`` frames blend in from the previous one."""

    corruption: str | None
    severity: int = 0
    length: int = 1
    transition: int = 0

    def __post_init__(self) -> None:
        if self.corruption is not None and self.corruption not in (*CORRUPTIONS, MIXED):
            raise ScheduleError(f"unknown corruption {self.corruption!r}; known: {', '.join(CORRUPTIONS)} "
                                f"and {MIXED}")
        if self.corruption is not None and not 1 <= self.severity <= 5:
            raise ScheduleError(f"{self.corruption}: severity must be 1..5, got {self.severity}")
        if self.length < 1 or not 0 <= self.transition <= self.length:
            raise ScheduleError(f"segment needs length >= 1 and 0 <= transition <= length, got "
                                f"length={self.length} transition={self.transition}")

    @property
    def name(self) -> str:
        return "clean" if self.corruption is None else f"{self.corruption}@{self.severity}"


@dataclass(frozen=True)
class Schedule:
    segments: tuple[Segment, ...]
    repeat: bool = False

    def __post_init__(self) -> None:
        if not self.segments:
            raise ScheduleError("a schedule needs at least one segment")

    @property
    def period(self) -> int:
        return sum(s.length for s in self.segments)

    @property
    def starts(self) -> list[int]:
        return list(np.cumsum([0] + [s.length for s in self.segments[:-1]]))

    def locate(self, t: int) -> tuple[int, int] | None:
        """(segment index, frame offset inside it) of frame ``t``; None past the end of a finite schedule."""
        if t < 0 or (not self.repeat and t >= self.period):
            return None
        t %= self.period
        for i, seg in enumerate(self.segments):
            if t < seg.length:
                return i, t
            t -= seg.length
        raise AssertionError("unreachable")

    def to_string(self) -> str:
        parts = [f"{s.name}:{s.length}" + (f"/{s.transition}" if s.transition else "") for s in self.segments]
        return ",".join(parts) + ("*" if self.repeat else "")


_SEGMENT_RE = re.compile(r"^\s*(?P<name>[a-z_]+)(?:@(?P<sev>\d))?:(?P<len>\d+)(?:/(?P<tr>\d+))?\s*$")


def parse_schedule(text: str) -> Schedule:
    """Parse "clean:200,fog@3:500,gaussian_noise@5:500/100*": segments ``name[@severity]:length[/transition]``,
    comma-separated; a trailing ``*`` repeats the schedule forever."""
    text = text.strip()
    repeat = text.endswith("*")
    items = [p for p in text.rstrip("*").split(",") if p.strip()]
    if not items:
        raise ScheduleError("empty schedule")
    segments = []
    for item in items:
        m = _SEGMENT_RE.match(item)
        if not m:
            raise ScheduleError(f"cannot parse segment {item!r}: expected name[@severity]:length[/transition]")
        name = m["name"]
        if name == "clean":
            if m["sev"]:
                raise ScheduleError(f"{item!r}: the clean environment has no severity")
            segments.append(Segment(None, 0, int(m["len"]), int(m["tr"] or 0)))
        else:
            if not m["sev"]:
                raise ScheduleError(f"{item!r}: a corruption needs a severity, e.g. {name}@3")
            segments.append(Segment(name, int(m["sev"]), int(m["len"]), int(m["tr"] or 0)))
    return Schedule(tuple(segments), repeat)


def default_schedule(severity: int = 3, frames_per_segment: int = 500, clean_start: int = 0,
                     transition: int = 0, corruptions: Sequence[str] = CORRUPTIONS) -> Schedule:
    """All corruptions in the CIFAR-C order at one severity, continual (no reset), after an optional clean start."""
    segs = [Segment(None, 0, clean_start)] if clean_start else []
    segs += [Segment(c, severity, frames_per_segment, transition) for c in corruptions]
    return Schedule(tuple(segs))


@dataclass(frozen=True)
class Frame:
    """What the camera sees: pixels and a frame index. No label, no environment."""

    index: int
    image: np.ndarray


@dataclass(frozen=True)
class Truth:
    """Evaluation only: the frame's label and the environment it was made in."""

    index: int
    label: int
    segment_index: int
    environment: str
    corruption: str | None
    severity: int


class WorldStream:
    """An endless (or schedule-long) reproducible stream of corrupted test images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, schedule: Schedule, seed: int = 0,
                 world: str = "mild") -> None:
        if world not in WORLDS:
            raise ScheduleError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels) or not len(images):
            raise ScheduleError(f"need uint8 images [N,H,W(,3)] with N labels, got {images.dtype} {images.shape}"
                                f" and {len(labels)} labels")
        self.images, self.labels, self.schedule, self.seed, self.world = images, labels, schedule, seed, world
        self.order = np.random.default_rng(seed).permutation(len(images))

    def __len__(self) -> int:
        """Frames in one pass of the schedule."""
        return self.schedule.period

    def corruption_at(self, seg: Segment, t: int) -> str | None:
        """The corruption frame ``t`` gets in ``seg``: its own, or for a mixed segment one drawn per frame."""
        if seg.corruption != MIXED:
            return seg.corruption
        return CORRUPTIONS[int(np.random.default_rng([self.seed, t, 2]).integers(len(CORRUPTIONS)))]

    def _environment_image(self, img: np.ndarray, seg: Segment, t: int, salt: int) -> np.ndarray:
        name = self.corruption_at(seg, t)
        if name is None:
            return img
        return corrupt(img, name, seg.severity, np.random.default_rng([self.seed, t, salt]), self.world)

    def frame(self, t: int) -> tuple[Frame, Truth]:
        """Frame ``t`` and its truth; depends only on (seed, t)."""
        where = self.schedule.locate(t)
        if where is None:
            raise IndexError(f"frame {t} is past the end of the schedule ({self.schedule.period} frames)")
        i, offset = where
        seg = self.schedule.segments[i]
        k = int(self.order[t % len(self.order)])
        img = self._environment_image(self.images[k], seg, t, 0)
        if offset < seg.transition:
            prev = self.schedule.segments[i - 1] if i > 0 else (
                self.schedule.segments[-1] if self.schedule.repeat and t >= self.schedule.period else None)
            before = self._environment_image(self.images[k], prev, t, 1) if prev is not None else self.images[k]
            alpha = (offset + 1) / (seg.transition + 1)
            img = np.clip(np.rint(alpha * img.astype(np.float32) + (1 - alpha) * before), 0, 255).astype(np.uint8)
        return Frame(t, img), Truth(t, int(self.labels[k]), i, seg.name, self.corruption_at(seg, t), seg.severity)

    def __iter__(self) -> Iterator[tuple[Frame, Truth]]:
        t = 0
        while self.schedule.repeat or t < self.schedule.period:
            yield self.frame(t)
            t += 1

    def batches(self, batch_size: int, start: int = 0,
                stop: int | None = None) -> Iterator[tuple[np.ndarray, list[Truth]]]:
        """Stacked uint8 frames [B,H,W] with their truths, for the benchmark harness."""
        stop = self.schedule.period if stop is None else stop
        for b in range(start, stop, batch_size):
            pairs = [self.frame(t) for t in range(b, min(b + batch_size, stop))]
            yield np.stack([f.image for f, _ in pairs]), [truth for _, truth in pairs]
