"""Payloads larger than a transport limit travel as chunks and are put back together at the other end.

The reassembler holds partial payloads keyed by an id and takes chunks in any order. It ignores duplicates (a
chunk already held, or one of a payload already delivered or given up), bounds its memory (concurrent payloads
and bytes held: the oldest partial payload gives way) and expires a payload whose missing chunks did not come in
time, reporting what it gave up. It never returns part of a payload; whether the whole is the one that was sent
is the bundle digest's job.
"""
from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable


class ChunkError(ValueError):
    """A chunk that contradicts the payload it claims to belong to, or one no limit admits."""


def split(payload: bytes, limit: int) -> list[bytes]:
    """``payload`` as chunks of at most ``limit`` bytes (one chunk, possibly empty, when it fits)."""
    if limit <= 0:
        raise ValueError(f"chunk limit must be > 0, got {limit}")
    if len(payload) <= limit:
        return [bytes(payload)]
    view = memoryview(payload)
    return [bytes(view[i:i + limit]) for i in range(0, len(payload), limit)]


@dataclass
class _Partial:
    count: int
    started: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    size: int = 0


class Reassembler:
    """Puts chunked payloads back together; ``add`` returns the whole payload once its last chunk arrives."""

    def __init__(self, max_payloads: int = 4, max_bytes: int = 256 * 1024 * 1024, timeout_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, remember: int = 64) -> None:
        self.max_payloads, self.max_bytes, self.timeout_s, self.clock = max_payloads, max_bytes, timeout_s, clock
        self._partial: OrderedDict[str, _Partial] = OrderedDict()  # oldest first
        self._done: deque[str] = deque(maxlen=remember)
        self._given_up: deque[str] = deque(maxlen=remember)
        self.held_bytes = 0
        self.dropped: list[tuple[str, str]] = []  # (id, reason) of partial payloads given up since last read

    def add(self, key: str, index: int, count: int, chunk: bytes) -> bytes | None:
        """Take one chunk; the complete payload when this was its last missing chunk, else None."""
        if count < 1 or not 0 <= index < count:
            raise ChunkError(f"chunk {index} of {count} is out of range")
        if key in self._done or key in self._given_up:
            return None  # a late chunk of a payload already delivered or given up
        self.expire()
        if count == 1:
            self._remember(key)
            return bytes(chunk)
        partial = self._partial.get(key)
        if partial is None:
            partial = self._partial[key] = _Partial(count, self.clock())
        elif partial.count != count:
            raise ChunkError(f"{key}: chunk says {count} chunks, earlier ones said {partial.count}")
        if index in partial.chunks:
            return None
        partial.chunks[index] = bytes(chunk)
        partial.size += len(chunk)
        self.held_bytes += len(chunk)
        self._make_room(key)
        if key not in self._partial:
            raise ChunkError(f"{key}: payload exceeds the reassembly memory limit of {self.max_bytes} bytes")
        if len(partial.chunks) < count:
            return None
        del self._partial[key]
        self.held_bytes -= partial.size
        self._remember(key)
        return b"".join(partial.chunks[i] for i in range(count))

    def expire(self) -> list[str]:
        """Give up partial payloads older than the timeout; returns their ids (also kept in ``dropped``)."""
        now = self.clock()
        stale = [k for k, p in self._partial.items() if now - p.started > self.timeout_s]
        for key in stale:
            self._drop(key, f"incomplete after {self.timeout_s:g} s")
        return stale

    def take_dropped(self) -> list[tuple[str, str]]:
        """The partial payloads given up since the last call, with the reason (for the caller to report)."""
        dropped, self.dropped = self.dropped, []
        return dropped

    @property
    def pending(self) -> int:
        return len(self._partial)

    def _make_room(self, key: str) -> None:
        """Oldest partial payloads give way to the one being filled; it goes itself if it alone is too big."""
        while len(self._partial) > self.max_payloads or self.held_bytes > self.max_bytes:
            oldest = next(k for k in self._partial if k != key) if len(self._partial) > 1 else key
            self._drop(oldest, "evicted: reassembly memory limit" if oldest != key
                       else "exceeds the reassembly memory limit")
            if oldest == key:
                return

    def _drop(self, key: str, reason: str) -> None:
        partial = self._partial.pop(key, None)
        if partial is not None:
            self.held_bytes -= partial.size
            self.dropped.append((key, reason))
            self._given_up.append(key)

    def _remember(self, key: str) -> None:
        self._done.append(key)
