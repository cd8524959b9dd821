"""The cloud's learning on Ray workers: each edge is placed on a worker (a Ray actor holding a strategy of its
own for the edges placed on it), so learning spreads over the cores of one machine or the machines of a Ray
cluster while the ROS front (the coordinator and its node: registrations, versions, signing, the DDS links)
stays one process.

Ray is optional: this module imports it only when a ``RayStrategy`` is built (``make_strategy(...,
ray_workers=N)``, the node's ``ray_workers`` parameter), so the product, the nodes and the tests run without
it. A worker is as the local strategy: batched learning over shared networks for its edges. What crosses
workers goes through the front: modules a trainable edge integrates into the cloud model reach every worker's
copy, and a merge round gathers edges of one structure from all workers (``gated_merge``).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Sequence

import numpy as np
import torch

from .checkpoint import Checkpoint
from .messages import Profile
from .strategies.base import MergeDecision, Strategy, Update
from .strategies.compose_merge import MergeMember, gated_merge

RAY_HINT = "pip install -r requirements-ray.txt (ray==2.60.0)"
START_TIMEOUT_S = 300.0  # workers import torch and build the models; a cluster without room never starts them


def _ray():
    """The ray module; ValueError (a refused setting, as a node reports it) where Ray is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise ValueError(f"learning on Ray workers needs Ray: {RAY_HINT}") from exc
    return ray


class StrategyShard:
    """One worker (a Ray actor): the strategy ``build`` (``strategies.local_strategy``) makes, for the edges
    placed here."""

    def __init__(self, build: Callable[..., Strategy], name: str, cloud: Checkpoint, student: Checkpoint | None,
                 options: dict, threads: int) -> None:
        torch.set_num_threads(threads)
        self.strategy = build(name, cloud, student, **options)

    def call(self, method: str, *args):
        return getattr(self.strategy, method)(*args)

    def attribute(self, name: str):
        return getattr(self.strategy, name, None)

    def learn(self, batches: list[tuple[str, np.ndarray]]) -> tuple[dict[str, Update], float]:
        """The strategy's ``learn``, and the CPU seconds it took here."""
        cpu = time.process_time()
        updates = self.strategy.learn(batches)
        return updates, time.process_time() - cpu

    def pid(self) -> int:
        return os.getpid()


class RayStrategy(Strategy):
    """The strategy ``name`` spread over ``workers`` Ray actors; edges are placed on the worker holding the
    fewest. ``address`` joins a running cluster ('auto', 'ray://head:10001'); '' starts Ray in this process
    (local workers, stopped again by ``close``). ``threads`` is each worker's torch threads."""

    concurrent = True

    def __init__(self, name: str, cloud: Checkpoint, student: Checkpoint | None = None, *,
                 build: Callable[..., Strategy], workers: int = 2, address: str = "", threads: int = 1,
                 **options) -> None:
        if workers < 1:
            raise ValueError(f"ray workers must be >= 1, got {workers}")
        ray = self.ray = _ray()
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(address=address or None, num_cpus=None if address else max(workers * threads, os.cpu_count()),
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        actor = ray.remote(num_cpus=threads)(StrategyShard)
        refs = ray.put(cloud), ray.put(student)
        self.shards = [actor.remote(build, name, *refs, options, threads) for _ in range(workers)]
        ready, _ = ray.wait([s.pid.remote() for s in self.shards], num_returns=workers, timeout=START_TIMEOUT_S)
        if len(ready) < workers:
            self.close()
            raise ValueError(f"{workers - len(ready)} of {workers} Ray workers did not start within "
                               f"{START_TIMEOUT_S:.0f} s: the cluster lacks {threads} free CPU(s) per worker, or "
                               f"eclm_ros is not installed on its nodes")
        self.pids = ray.get(ready)
        self.lanes = workers
        self.description = (student or cloud).description
        self.summary = ray.get(self.shards[0].attribute.remote("summary")) + f" (on {workers} Ray workers)"
        self.min_gain = ray.get(self.shards[0].attribute.remote("min_gain"))  # None: the strategy does not merge
        self.placement: dict[str, int] = {}
        self.cpu_s = [0.0] * workers  # CPU seconds each worker spent learning
        self._lock = threading.Lock()

    def lane(self, edge_id: str) -> int:
        with self._lock:
            if edge_id not in self.placement:
                loads = np.bincount(list(self.placement.values()), minlength=self.lanes)
                self.placement[edge_id] = int(loads.argmin())
            return self.placement[edge_id]

    def _get(self, refs):
        """Ray's results; a worker's exception is raised as itself (BudgetError, KeyError, ModulesRefused...)."""
        try:
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None

    def _call(self, edge_id: str, method: str, *args):
        return self._get(self.shards[self.lane(edge_id)].call.remote(method, edge_id, *args))

    def register(self, edge_id: str, profile: Profile) -> Update:
        return self._call(edge_id, "register", profile)

    def in_sync(self, edge_id: str, profile: Profile) -> bool:
        return self._call(edge_id, "in_sync", profile)

    def served_spec(self, edge_id: str) -> str:
        return self._call(edge_id, "served_spec")

    def reassemble(self, edge_id: str, profile: Profile, reason: str) -> Update:
        return self._call(edge_id, "reassemble", profile, reason)

    def pace(self, spare: float) -> None:
        """Every worker's (an actor runs its calls in order: the pace reaches it before the next round)."""
        for shard in self.shards:
            shard.call.remote("pace", spare)

    def learn(self, batches: Sequence[tuple[str, np.ndarray]]) -> dict[str, Update]:
        """Each worker learns for its own edges, all at once; the updates come back together."""
        by_lane: dict[int, list] = {}
        for edge_id, views in batches:
            by_lane.setdefault(self.lane(edge_id), []).append((edge_id, views))
        lanes = list(by_lane)
        results = self._get([self.shards[lane].learn.remote(by_lane[lane]) for lane in lanes])
        updates = {}
        for lane, (part, cpu) in zip(lanes, results):
            updates.update(part)
            with self._lock:
                self.cpu_s[lane] += cpu
        return updates

    def on_modules(self, edge_id: str, spec_json: str, module_state: dict[str, torch.Tensor],
                   frames: int) -> Update | None:
        """Integrated where the edge is learned for; the other workers' cloud models take the same modules."""
        update = self._call(edge_id, "on_modules", spec_json, module_state, frames)
        owner = self.lane(edge_id)
        self._get([s.call.remote("integrate_cloud", module_state) for i, s in enumerate(self.shards) if i != owner])
        return update

    def aggregate(self) -> tuple[dict[str, Update], list[MergeDecision]]:
        """A merge round over the edges of every worker, as one strategy would run it."""
        if self.min_gain is None:
            return {}, []
        groups: dict[str, list[MergeMember]] = {}
        for part in self._get([s.call.remote("merge_groups") for s in self.shards]):
            for structure, members in part.items():
                groups.setdefault(structure, []).extend(members)
        return gated_merge(groups, self._merge_check, self._merge_apply, self.min_gain)

    def _by_lane(self, edges: Sequence[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for edge in edges:
            out.setdefault(self.lane(edge), []).append(edge)
        return out

    def _merge_check(self, edges: list[str], merged: dict) -> list[tuple[float, float]]:
        parts = self._by_lane(edges)
        answers = self._get([self.shards[lane].call.remote("merge_check", own, merged) for lane, own in parts.items()])
        accuracy = {e: a for own, part in zip(parts.values(), answers) for e, a in zip(own, part)}
        return [accuracy[e] for e in edges]

    def _merge_apply(self, edges: list[str], merged: dict) -> dict[str, Update]:
        parts = self._by_lane(edges)
        updates = {}
        for part in self._get([self.shards[lane].call.remote("merge_apply", own, merged)
                                  for lane, own in parts.items()]):
            updates.update(part)
        return updates

    def state_dict(self) -> dict:
        """The workers' states as one (the same form as the local strategy's: a cloud may restart with another
        number of workers, or without Ray)."""
        states = self._get([s.call.remote("state_dict") for s in self.shards])
        return {"cloud": states[0]["cloud"], "served": {k: v for st in states for k, v in st["served"].items()},
                "edges": {k: v for st in states for k, v in st["edges"].items()}}

    def load_state_dict(self, state: dict) -> None:
        """Every saved edge is placed again (fewest first) and its worker takes its part of the state."""
        parts = {lane: {"cloud": state["cloud"], "served": {}, "edges": {}} for lane in range(self.lanes)}
        for edge, s in state["edges"].items():
            part = parts[self.lane(edge)]
            part["edges"][edge] = s
            part["served"][s["submodel"]] = state["served"][s["submodel"]]
        self._get([self.shards[lane].call.remote("load_state_dict", part) for lane, part in parts.items()])

    def close(self) -> None:
        for shard in self.shards:
            self.ray.kill(shard)
        if self.started:
            self.ray.shutdown()
