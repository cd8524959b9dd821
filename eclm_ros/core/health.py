"""Health as data: one status per concern (camera input, model, cloud link, ...), its level decided from what
happened over a recent window, so a node publishes it on /diagnostics and a test reads it without ROS."""
from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass
class Health:
    name: str
    level: int
    message: str
    values: dict[str, object] = field(default_factory=dict)


class EventWindow:
    """Counts of named events over the last ``seconds`` (e.g. frames served, frames refused)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic, max_events: int = 100_000) -> None:
        self.seconds, self.clock = seconds, clock
        self._events: deque[tuple[float, str]] = deque(maxlen=max_events)

    def add(self, name: str) -> None:
        self._events.append((self.clock(), name))

    def _trim(self) -> None:
        horizon = self.clock() - self.seconds
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def counts(self) -> Counter:
        self._trim()
        return Counter(name for _, name in self._events)

    def count(self, name: str) -> int:
        return self.counts()[name]
