"""How the edge agent and the cloud coordinator reach each other: two small interfaces, and an in-memory
implementation with simulated links.

The ROS nodes implement the interfaces over DDS (``eclm_ros.ros.links``); ``InMemoryNetwork`` carries the very
same messages between objects in one process, byte-counted, through a simulated link per edge and direction
(rate, latency, loss, outages) on a clock the caller drives. The benchmark runs the system on it and tests
drive many edges without DDS.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .messages import EdgeStatus, LearnedModules, ModelUpdate, Registration, RegistrationReply, SampleBatch

REGISTRATION_BYTES = 128  # a RegisterEdge request or reply on the wire
STATUS_BYTES = 256  # an EdgeStatus


class EdgeLink(Protocol):
    """What an edge agent needs from its link to the cloud."""

    def cloud_ready(self) -> bool:
        """Whether the cloud can be asked now (its registration service is reachable)."""

    def register(self, request: Registration, done: Callable[[RegistrationReply], None]) -> None:
        """Ask asynchronously; ``done`` is called with the reply, or never when it is lost."""

    def send_samples(self, batch: SampleBatch) -> None: ...

    def send_modules(self, modules: LearnedModules) -> None: ...

    def send_status(self, status: EdgeStatus) -> None: ...


class CloudLink(Protocol):
    """What the cloud coordinator needs to reach an edge."""

    def send_update(self, edge_id: str, parts: list[ModelUpdate]) -> None:
        """Deliver an update (one part, or its chunks in order) to one edge."""


class SimClock:
    """A clock the caller advances (simulated seconds)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


@dataclass(frozen=True)
class LinkModel:
    """One direction of a simulated link: bit rate, one-way latency, loss probability, outage windows
    ``[(start_s, end_s), ...]`` during which everything sent is lost."""

    rate_bps: float = math.inf
    latency_s: float = 0.0
    loss: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()

    def up(self, t: float) -> bool:
        return not any(start <= t < end for start, end in self.outages)


@dataclass
class LinkCounters:
    """What crossed one direction of a link (delivered), and what it lost."""

    bytes: int = 0
    messages: int = 0
    lost: int = 0
    frames: int = 0  # uploaded frames delivered (uplink)
    updates: int = 0  # update parts delivered (downlink)


@dataclass
class _Pipe:
    """One direction of one edge's link: a FIFO with serialisation delay, latency, loss and outages."""

    model: LinkModel
    rng: np.random.Generator
    counters: LinkCounters = field(default_factory=LinkCounters)
    free_at: float = 0.0

    def send(self, now: float, size: int) -> float | None:
        """Arrival time of a message of ``size`` bytes sent now, or None when it is lost."""
        if not self.model.up(now) or (self.model.loss and self.rng.random() < self.model.loss):
            self.counters.lost += 1
            return None
        start = max(now, self.free_at)
        self.free_at = start + (8 * size / self.model.rate_bps if math.isfinite(self.model.rate_bps) else 0.0)
        return self.free_at + self.model.latency_s


class InMemoryNetwork:
    """One cloud coordinator and any number of edge agents in one process. ``deliver()`` hands over every
    message that has arrived by the clock's time, in arrival order."""

    def __init__(self, clock: Callable[[], float], seed: int = 0) -> None:
        self.clock = clock
        self.rng = np.random.default_rng(seed)
        self.cloud = None  # the coordinator: register, on_samples, on_modules, on_status
        self.edges: dict[str, object] = {}  # edge id -> agent: on_update
        self.up: dict[str, _Pipe] = {}
        self.down: dict[str, _Pipe] = {}
        self._queue: list = []
        self._seq = itertools.count()

    def cloud_link(self) -> "InMemoryCloudLink":
        """The link a coordinator sends updates through (attach the coordinator with ``serve``)."""
        return InMemoryCloudLink(self)

    def serve(self, coordinator) -> None:
        """The coordinator that receives registrations and uploads."""
        self.cloud = coordinator

    def connect(self, edge_id: str, uplink: LinkModel = LinkModel(), downlink: LinkModel = LinkModel()
                ) -> "InMemoryEdgeLink":
        """A link for an edge (attach the agent with ``attach`` once it exists)."""
        self.up[edge_id] = _Pipe(uplink, self.rng)
        self.down[edge_id] = _Pipe(downlink, self.rng)
        return InMemoryEdgeLink(self, edge_id)

    def attach(self, edge_id: str, agent) -> None:
        self.edges[edge_id] = agent

    def set_link(self, edge_id: str, uplink: LinkModel | None = None, downlink: LinkModel | None = None) -> None:
        """Change an edge's link from now on (a shaped or failing link)."""
        if uplink is not None:
            self.up[edge_id].model = uplink
        if downlink is not None:
            self.down[edge_id].model = downlink

    def _send(self, pipe: _Pipe, size: int, deliver: Callable[[], None], frames: int = 0, updates: int = 0) -> None:
        arrival = pipe.send(self.clock(), size)
        if arrival is None:
            return

        def arrive() -> None:
            pipe.counters.bytes += size
            pipe.counters.messages += 1
            pipe.counters.frames += frames
            pipe.counters.updates += updates
            deliver()
        heapq.heappush(self._queue, (arrival, next(self._seq), arrive))

    def deliver(self) -> int:
        """Hand over everything due by now (messages a delivery causes, e.g. a reply, wait for the next call
        unless already due); returns how many messages were delivered."""
        now, count = self.clock(), 0
        while self._queue and self._queue[0][0] <= now:
            _, _, arrive = heapq.heappop(self._queue)
            arrive()
            count += 1
        return count

    @property
    def in_flight(self) -> int:
        return len(self._queue)


class InMemoryEdgeLink:
    """An edge's side of the in-memory network."""

    def __init__(self, network: InMemoryNetwork, edge_id: str) -> None:
        self.network, self.edge_id = network, edge_id

    @property
    def _up(self) -> _Pipe:
        return self.network.up[self.edge_id]

    def cloud_ready(self) -> bool:
        return self.network.cloud is not None and self._up.model.up(self.network.clock())

    def register(self, request: Registration, done: Callable[[RegistrationReply], None]) -> None:
        net = self.network

        def at_cloud() -> None:
            reply = net.cloud.register(request)
            net._send(net.down[self.edge_id], REGISTRATION_BYTES, lambda: done(reply))
        net._send(self._up, REGISTRATION_BYTES, at_cloud)

    def send_samples(self, batch: SampleBatch) -> None:
        self.network._send(self._up, batch.wire_size, lambda: self.network.cloud.on_samples(batch),
                           frames=len(batch.frames))

    def send_modules(self, modules: LearnedModules) -> None:
        self.network._send(self._up, modules.wire_size, lambda: self.network.cloud.on_modules(modules))

    def send_status(self, status: EdgeStatus) -> None:
        self.network._send(self._up, STATUS_BYTES, lambda: self.network.cloud.on_status(status))


class InMemoryCloudLink:
    """The cloud's side: updates travel down each edge's link, in order."""

    def __init__(self, network: InMemoryNetwork) -> None:
        self.network = network

    def send_update(self, edge_id: str, parts: list[ModelUpdate]) -> None:
        net = self.network
        pipe = net.down.get(edge_id)
        if pipe is None:
            return
        for part in parts:
            net._send(pipe, part.wire_size, lambda p=part: _to_edge(net, edge_id, p), updates=1)


def _to_edge(net: InMemoryNetwork, edge_id: str, part: ModelUpdate) -> None:
    agent = net.edges.get(edge_id)
    if agent is not None:
        agent.on_update(part)
