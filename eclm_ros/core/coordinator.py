"""The cloud, without ROS: registrations, per-edge versions, the learning strategy, update encoding per link,
signing, chunking, persistence.

Uploads are admitted (registered edge, decodable, signed by the edge's enrolled key when keys are set) and
queued per edge, bounded in all (a full queue drops from the edge holding the most, so a flooding edge never
crowds out the others). Learning takes rounds: one waiting batch from each of up to ``round_frames`` frames'
worth of edges, served round-robin, learned together by the strategy (batched; its optional extra learning
paced by what waits behind the round, ``Strategy.pace``), on the caller's thread
(``process``, the benchmark) or on a worker thread per strategy lane (``start``, the node; a lane is a worker
of a strategy that spreads edges, e.g. over Ray), so message handling never waits for a backward pass. Every
update carries the newest upload batch of its edge it learned from (the edge measures upload-to-update
latency with it). Every update leaves as a signed,
versioned ``ModelUpdate`` sized to the edge's measured downlink, in chunks when large, through a
``CloudLink``. State (versions and everything the strategy learned) is saved atomically and restored on
restart, so edges keep their versions and what the cloud learned for them.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bandwidth import ENCODING_ORDER, link_encoding
from .chunking import split
from .health import ERROR, OK, WARN, EventWindow, Health
from .messages import (KIND_FULL, MAX_UPLOAD_BATCH, EdgeStatus, LearnedModules, ModelUpdate, Profile, Registration,
                       RegistrationReply, SampleBatch, UpdateHeader)
from .models import BudgetError
from .preprocess import ImageFormatError, Preprocessor
from .selection import decode_frames
from .signing import EdgeKeys, SignatureError
from .strategies import Cause, ModulesRefused, Strategy, Update
from .tensor_codec import CodecError, pack, unpack
from .transport import CloudLink
from .updates import signature_for

STATE_FILE = "coordinator_state.pt"
LINK_SLACK = 2.0  # an update's expected time on the link: its bits over the measured downlink, times this


@dataclass
class CoordinatorConfig:
    """The coordinator's settings (the node's parameters)."""

    update_encoding: str = "fp16"
    update_deadline_s: float = 1.0
    max_pending_batches: int = 64
    max_chunk_bytes: int = 16 * 1024 * 1024
    resync_grace_s: float = 2.0  # a heartbeat this soon after an update's expected arrival may not have seen it yet
    round_frames: int = 512  # uploaded frames learned from in one batched round (one batch per edge at most)
    # the most the share of optional extra learning may rise from one round to the next: a backlog cuts it at once,
    # it comes back over rounds, so a cloud that just drained its queue does not refill it with one costly round
    pace_recovery: float = 0.25

    def check(self) -> None:
        rules = [("update_encoding", self.update_encoding in ENCODING_ORDER, "raw, fp16 or int8"),
                 ("update_deadline_s", self.update_deadline_s > 0, "must be > 0"),
                 ("max_pending_batches", self.max_pending_batches >= 1, "must be >= 1"),
                 ("max_chunk_bytes", self.max_chunk_bytes > 0, "must be > 0"),
                 ("resync_grace_s", self.resync_grace_s >= 0, "must be >= 0"),
                 ("round_frames", self.round_frames >= 1, "must be >= 1"),
                 ("pace_recovery", 0 < self.pace_recovery <= 1, "must be in (0, 1]")]
        for name, ok, why in rules:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} refused: {why}")


class Coordinator:
    """One cloud serving any number of edges through ``link``."""

    def __init__(self, strategy: Strategy, link: CloudLink, config: CoordinatorConfig | None = None, *,
                 private_key=None, edge_keys: EdgeKeys | None = None, state_dir: Path | str | None = None,
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger | None = None) -> None:
        self.config = config or CoordinatorConfig()
        self.config.check()
        self.strategy, self.link = strategy, link
        self.private_key, self.edge_keys = private_key, edge_keys
        self.state_dir = Path(state_dir) if state_dir else None
        self.clock = clock
        self.log = log or logging.getLogger("eclm_ros.cloud")
        self.preprocess = Preprocessor(strategy.description)
        self.lock = threading.RLock()  # message handlers and the learning thread share the strategy
        # the links' state (estimates, links down, arrival times) has its own lock, taken after ``lock`` when both
        # are: a monitor's estimate never waits for a learning step, nor do the handlers queued behind it
        self._links = threading.RLock()
        self.versions: dict[str, int] = {}
        self.last_batch: dict[str, int] = {}  # per edge, the highest batch_seq learned from (replays refused)
        self.module_uploads: dict[str, deque] = {}  # per edge, the signatures of its latest module uploads
        # edge -> when its newest update should have arrived: its bits over the measured downlink after those sent
        # before it; inf while the edge's link is down (DDS holds them and delivers them when it is back)
        self.arrive_by: dict[str, float] = {}
        self.links_down: set[str] = set()  # edges whose monitor reports their link down
        self.last_status: dict[str, EdgeStatus] = {}
        self.downlinks: dict[str, float] = {}  # edge -> measured downlink bit/s
        self.counters = Counter(batches=0, frames=0, rejected_batches=0, updates=0, dropped_batches=0,
                                learned_batches=0, learned_frames=0, rounds=0, registrations=0, recompositions=0,
                                merges_accepted=0, merges_refused=0, modules_integrated=0, rejected_modules=0,
                                saves=0, save_failures=0)
        self.learn_cpu_s = 0.0  # CPU seconds of this process's learning threads (a remote strategy's are its own)
        self.learned_seq: dict[str, int] = {}  # per edge, the newest batch learned from (sent with its updates)
        self.encodings = Counter(dict.fromkeys(ENCODING_ORDER, 0))
        self.events = EventWindow(10.0, clock)
        self.last_reject = ""
        self.save_error = ""  # why the last save failed, until one succeeds
        self.saved_at: float | None = None
        self._queue_lock = threading.Condition()  # the learning queue's own: handlers never wait for a step
        self.waiting: dict[str, deque] = {}  # per edge, its admitted batches (batch_seq, views), oldest first
        self.turns = [deque() for _ in range(strategy.lanes)]  # per lane, edges with waiting batches, in turn
        self.queued = 0
        self.spare = 1.0  # the last round's share of optional extra learning (``Strategy.pace``)
        self.control: deque = deque()  # module integrations and merge rounds, run before the next round
        self._running = threading.Event()
        self._workers: list[threading.Thread] = []
        if self.state_dir is not None and (self.state_dir / STATE_FILE).exists():
            self.restore()

    def configure(self, **changes) -> None:
        """Change settings while running (a node's run-time parameters), checked first."""
        new = replace(self.config, **changes)
        new.check()
        with self.lock:
            self.config = new

    # -- edges ----------------------------------------------------------------------------------------
    def register(self, request: Registration) -> RegistrationReply:
        """A registration doubles as the edge's heartbeat: an edge already in sync (same profile, the version
        the cloud last sent) gets nothing; a new, returning or out-of-sync edge gets its full model, at a
        version above the one it serves (it would refuse a lower one as stale)."""
        edge_id = request.edge_id
        if not edge_id:
            return RegistrationReply(False, "edge_id must not be empty")
        with self.lock:
            self._link_back(edge_id)  # a registration crossed it
            if self.strategy.in_sync(edge_id, request.profile) and self._version_in_sync(edge_id, request.current_version):
                return RegistrationReply(True, "in sync", self.strategy.served_spec(edge_id), request.current_version)
            try:
                update = self.strategy.register(edge_id, request.profile)
            except BudgetError as exc:
                self.log.warning(f"refused registration of {edge_id!r}: {exc}")
                return RegistrationReply(False, str(exc))
            self.versions[edge_id] = max(self.versions.get(edge_id, 0), int(request.current_version))
            version = self.publish(edge_id, update, "raw")
        self.counters["registrations"] += 1
        self.log.info(f"edge {edge_id} {update.cause.value}, sent version {version}")
        return RegistrationReply(True, update.cause.value, update.submodel_spec, version)

    def _version_in_sync(self, edge_id: str, version: int) -> bool:
        """The edge serves the newest version, or an older one while the newer ones are still travelling to it
        (on a slow link a full model takes seconds; resending it then would only queue another behind it, and the
        edge would refuse the affine updates already on their way as older than its new registration)."""
        newest = self.versions.get(edge_id)
        if newest is None or version > newest:
            return False
        with self._links:
            arrive_by = self.arrive_by.get(edge_id, -float("inf"))
        in_flight = self.clock() < arrive_by + self.config.resync_grace_s
        return version == newest or (in_flight and version > 0)

    def _link_back(self, edge_id: str) -> None:
        """The edge's link works again: what was sent while it was down is delivered from now."""
        with self._links:
            if edge_id in self.links_down:
                self.links_down.discard(edge_id)
                if self.arrive_by.get(edge_id) == float("inf"):
                    self.arrive_by[edge_id] = self.clock()

    def reassemble(self, edge_id: str, profile: Profile, reason: str = "operator") -> RegistrationReply:
        """Re-derive an edge's sub-model for a new budget (or its current environment); the weights follow as
        an update, like a registration's."""
        with self.lock:
            if edge_id not in self.versions:
                return RegistrationReply(False, f"edge {edge_id!r} has not registered")
            try:
                update = self.strategy.reassemble(edge_id, profile, reason)
            except BudgetError as exc:
                self.log.warning(f"refused re-assembly for {edge_id!r}: {exc}")
                return RegistrationReply(False, str(exc))
            version = self.publish(edge_id, update, "raw")
        self.log.info(f"re-assembled {edge_id}: {update}, version {version}")
        return RegistrationReply(True, str(update), update.submodel_spec, version)

    def on_status(self, status: EdgeStatus) -> None:
        self.last_status[status.edge_id] = status

    def on_link(self, edge_id: str, downlink_bps: float, link_up: bool = True) -> None:
        """An edge's measured downlink (its bandwidth monitor); a non-finite or negative one is refused."""
        if not np.isfinite(downlink_bps) or downlink_bps < 0:
            self._refuse("link", f"link estimate for {edge_id!r}: downlink {downlink_bps} bit/s")
            return
        with self._links:
            self.downlinks[edge_id] = downlink_bps if link_up else 0.0
            if link_up:
                self._link_back(edge_id)
            else:
                self.links_down.add(edge_id)

    # -- uploads --------------------------------------------------------------------------------------
    def on_samples(self, batch: SampleBatch) -> bool:
        """Admit an upload and queue it for learning; False (counted, with the reason) when refused or dropped."""
        try:
            if batch.edge_id not in self.versions:
                raise ValueError(f"samples from unregistered edge {batch.edge_id!r}")
            if not 0 < len(batch.frames) <= MAX_UPLOAD_BATCH:
                raise ValueError(f"{len(batch.frames)} frames in one batch (1 to {MAX_UPLOAD_BATCH})")
            self._check_signature(batch.edge_id, batch.signed_bytes(), batch.signature_scheme, batch.signature)
            last = self.last_batch.get(batch.edge_id, -1)
            if batch.batch_seq <= last:
                raise ValueError(f"replayed or out-of-order upload: batch {batch.batch_seq} <= {last}, the last "
                                 f"learned from")
            views = np.stack([self.preprocess.view(v) for v in decode_frames(batch.frames, self.preprocess.channels)])
        except (ValueError, SignatureError, ImageFormatError) as exc:
            self.refuse_samples(f"batch {batch.batch_seq} of {batch.edge_id}: {exc}")
            return False
        self.last_batch[batch.edge_id] = batch.batch_seq
        if not self._enqueue(batch.edge_id, batch.batch_seq, views):
            return False
        self.counters["batches"] += 1
        self.counters["frames"] += len(views)
        return True

    def on_modules(self, msg: LearnedModules) -> bool:
        """A trainable edge's adapted modules: decoded strictly here, integrated on the learning thread."""
        try:
            if msg.edge_id not in self.versions:
                raise ValueError(f"modules from unregistered edge {msg.edge_id!r}")
            self._check_signature(msg.edge_id, msg.signed_bytes(), msg.signature_scheme, msg.signature)
            seen = self.module_uploads.setdefault(msg.edge_id, deque(maxlen=64))
            if msg.signature and bytes(msg.signature) in seen:
                raise ValueError("replayed modules: this edge's signed upload was learned from already")
            tensors = {k: torch.from_numpy(v) for k, v in unpack(msg.bundle).items()}
            if msg.signature:
                seen.append(bytes(msg.signature))
        except (ValueError, CodecError, SignatureError) as exc:
            self.counters["rejected_modules"] += 1
            self._refuse("modules", f"modules of {msg.edge_id}: {exc}")
            return False
        self._control(("modules", msg.edge_id, (msg.submodel_spec, tensors, int(msg.frames))))
        return True

    def refuse_samples(self, text: str) -> None:
        """An upload that will not teach the cloud (also the node's own decoding failures)."""
        self.counters["rejected_batches"] += 1
        self._refuse("samples", text)

    def merge_round(self) -> None:
        """Queue a merge round across edges (ECAvg), run by the learning thread like every other job."""
        self._control(("merge", "", None))

    def _check_signature(self, edge_id: str, data: bytes, scheme: str, signature: bytes) -> None:
        if self.edge_keys is not None:
            self.edge_keys.check(edge_id, data, scheme, bytes(signature))

    def _enqueue(self, edge_id: str, seq: int, views: np.ndarray) -> bool:
        """Queue an admitted batch; at the bound, the oldest batch of the edge holding the most waiting goes,
        unless that is this edge, whose new batch is then dropped (max-min fair: nobody starves)."""
        with self._queue_lock:
            if self.queued >= self.config.max_pending_batches:
                hog = max(self.waiting, key=lambda e: len(self.waiting[e]))
                if len(self.waiting[hog]) <= len(self.waiting.get(edge_id, ())):
                    self._dropped()
                    return False
                self._evict(hog)
                self._dropped()
            if edge_id not in self.waiting:
                self.waiting[edge_id] = deque()
                self.turns[self.strategy.lane(edge_id)].append(edge_id)
            self.waiting[edge_id].append((seq, views))
            self.queued += 1
            self._queue_lock.notify_all()
        return True

    def _evict(self, edge_id: str) -> None:
        """Drop the edge's oldest waiting batch (the queue lock held)."""
        batches = self.waiting[edge_id]
        batches.popleft()
        self.queued -= 1
        if not batches:
            del self.waiting[edge_id]
            self.turns[self.strategy.lane(edge_id)].remove(edge_id)

    def _dropped(self) -> None:
        self.counters["dropped_batches"] += 1
        self.events.add("dropped_batches")

    def _control(self, job: tuple) -> None:
        with self._queue_lock:
            self.control.append(job)
            self._queue_lock.notify_all()

    def discard_queued(self) -> int:
        """Forget every waiting upload (admission tests that must not learn); returns how many."""
        with self._queue_lock:
            count, self.queued = self.queued, 0
            self.waiting.clear()
            for turns in self.turns:
                turns.clear()
        return count

    def _refuse(self, kind: str, text: str) -> None:
        self.events.add(f"refused/{kind}")
        self.last_reject = text
        self.log.warning(f"refused {text}")

    # -- learning -------------------------------------------------------------------------------------
    def _next(self, lane: int) -> tuple | list | None:
        """The next job of a lane (the queue lock held): a control job (lane 0), else a round of waiting
        batches, one per edge in turn until ``round_frames`` frames; None when there is nothing to do."""
        if lane == 0 and self.control:
            return self.control.popleft()
        turns, items, frames = self.turns[lane], [], 0
        for _ in range(len(turns)):
            edge_id = turns[0]
            waiting = self.waiting[edge_id]
            if items and frames + len(waiting[0][1]) > self.config.round_frames:
                break
            turns.popleft()
            seq, views = waiting.popleft()
            self.queued -= 1
            if waiting:
                turns.append(edge_id)  # its next batch waits for every other edge's turn
            else:
                del self.waiting[edge_id]
            items.append((edge_id, seq, views))
            frames += len(views)
        return items or None

    def process(self, max_jobs: int | None = None, lane: int | None = None) -> int:
        """Run queued jobs and rounds on this thread, every lane in turn (or only ``lane``); returns how many ran."""
        done = 0
        lanes = range(len(self.turns)) if lane is None else [lane]
        while max_jobs is None or done < max_jobs:
            with self._queue_lock:
                jobs = [job for i in lanes if (job := self._next(i)) is not None]
            if not jobs:
                break
            for job in jobs[:None if max_jobs is None else max_jobs - done]:
                self._run(job)
                done += 1
        return done

    def start(self) -> None:
        """Learn on a worker thread per lane until ``close``; again after it (once the last workers have finished
        their step)."""
        for worker in self._workers:
            worker.join()
        self._running.set()
        self._workers = [threading.Thread(target=self._learn_loop, args=(lane,), name=f"eclm-learner-{lane}",
                                          daemon=True) for lane in range(len(self.turns))]
        for worker in self._workers:
            worker.start()

    def _learn_loop(self, lane: int) -> None:
        while self._running.is_set():
            with self._queue_lock:
                job = self._next(lane)
                if job is None:
                    self._queue_lock.wait(timeout=0.2)
                    continue
            self._run(job)

    def _run(self, job: tuple | list) -> None:
        if isinstance(job, list):
            self._learn(job)
            return
        kind, edge_id, data = job
        try:
            with self.lock:
                if kind == "modules":
                    self._send(edge_id, self.strategy.on_modules(edge_id, *data))
                    self.counters["modules_integrated"] += 1
                else:
                    self._merge()
        except ModulesRefused as exc:
            self.counters["rejected_modules"] += 1
            self._refuse("modules", f"modules of {edge_id}: {exc}")
        except Exception as exc:  # a learning failure must not stop the coordinator
            self._refuse("learning", f"{kind} for {edge_id}: {type(exc).__name__}: {exc}")

    def _learn(self, items: list[tuple[str, int, np.ndarray]]) -> None:
        """One round: the strategy learns from every edge's batch at once (under the lock unless it is
        concurrent), then each update leaves. Its optional extra learning is paced by the backlog: all of it
        with nothing waiting, none once as many batches wait as this round learns from, and after a backlog
        it comes back by ``pace_recovery`` a round."""
        batches = [(edge_id, views) for edge_id, _, views in items]
        cpu = time.thread_time()
        self.spare = min(max(0.0, 1.0 - self.queued / len(items)), self.spare + self.config.pace_recovery)
        try:
            if self.strategy.concurrent:
                self.strategy.pace(self.spare)
                updates = self.strategy.learn(batches)
            else:
                with self.lock:
                    self.strategy.pace(self.spare)
                    updates = self.strategy.learn(batches)
        except Exception as exc:  # a learning failure must not stop the coordinator
            self._refuse("learning", f"samples of {sorted({e for e, _ in batches})}: {type(exc).__name__}: {exc}")
            return
        with self.lock:
            self.learn_cpu_s += time.thread_time() - cpu
            self.counters["rounds"] += 1
            self.counters["learned_batches"] += len(items)
            self.counters["learned_frames"] += sum(len(views) for _, _, views in items)
            for edge_id, seq, _ in items:
                self.learned_seq[edge_id] = max(seq, self.learned_seq.get(edge_id, 0))
            for edge_id, update in updates.items():
                self._send(edge_id, update)

    def _send(self, edge_id: str, update: Update | None) -> None:
        if update is None:
            return
        version = self.publish(edge_id, update, self.config.update_encoding)
        if update.cause is Cause.RECOMPOSED:
            self.counters["recompositions"] += 1
            self.log.info(f"{edge_id}: {update} (version {version})")

    def _merge(self) -> None:
        updates, decisions = self.strategy.aggregate()
        for decision in decisions:
            self.counters["merges_accepted" if decision.accepted else "merges_refused"] += 1
            (self.log.info if decision.accepted else self.log.warning)(str(decision))
        for edge_id, update in updates.items():
            self._send(edge_id, update)

    # -- updates --------------------------------------------------------------------------------------
    def publish(self, edge_id: str, update: Update, encoding: str) -> int:
        """Version, encode (as small as the edge's downlink needs), sign and chunk an update, and send it."""
        with self.lock:
            version = self.versions.get(edge_id, 0)
            new_version = version + 1
            payload = sum(int(t.numel()) * t.element_size() for t in update.tensors.values())
            with self._links:
                downlink = self.downlinks.get(edge_id, 0.0)
            encoding = link_encoding(encoding, payload, downlink, self.config.update_deadline_s)
            self.encodings[encoding] += 1
            bundle = pack(update.tensors, encoding=encoding)
            header = UpdateHeader(edge_id, uuid.uuid4().hex, new_version, 0 if update.kind == KIND_FULL else version,
                                  update.kind, update.submodel_spec)
            if self.private_key is not None:
                scheme, key_id, signature = signature_for(header, bundle, self.private_key)
                header = replace(header, signature_scheme=scheme, key_id=key_id, signature=signature)
            chunks = split(bundle.payload, self.config.max_chunk_bytes)
            learned = self.learned_seq.get(edge_id, 0)
            parts = [ModelUpdate(header, replace(bundle, payload=chunk), i, len(chunks), learned)
                     for i, chunk in enumerate(chunks)]
            self.versions[edge_id] = new_version
            now = self.clock()
            transfer = LINK_SLACK * 8 * len(bundle.payload) / downlink if downlink > 0 else 0.0
            with self._links:
                self.arrive_by[edge_id] = float("inf") if edge_id in self.links_down else (
                    max(self.arrive_by.get(edge_id, now), now) + transfer)
            self.counters["updates"] += 1
        self.link.send_update(edge_id, parts)
        return new_version

    # -- persistence and health -----------------------------------------------------------------------
    def save(self, wait_s: float | None = None) -> bool:
        """Write the state atomically and durably: temp file, fsync, rename, fsync of the folder (a crash or
        power cut leaves the old file or the new one, whole). With ``wait_s``, give up (False) rather than wait
        longer for a learning step to release the state. A full or failing disk is logged, reported in
        ``health()`` and tried again at the next save: the cloud keeps serving from memory meanwhile."""
        if self.state_dir is None:
            return False
        if not self.lock.acquire(timeout=-1 if wait_s is None else wait_s):
            return False
        try:
            blob = {"versions": dict(self.versions), "last_batch": dict(self.last_batch),
                    "strategy": self.strategy.state_dict()}
        finally:
            self.lock.release()
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(blob, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_dir / STATE_FILE)
            _fsync_dir(self.state_dir)
        except (OSError, RuntimeError) as exc:  # torch's zip writer reports a failed write as RuntimeError
            tmp.unlink(missing_ok=True)  # give back the space a partial file holds
            self.counters["save_failures"] += 1
            self.save_error = f"cannot save state to {self.state_dir}: {type(exc).__name__}: {exc}"
            self.log.error(f"{self.save_error} (failure {self.counters['save_failures']}); serving on from memory, "
                           f"the last saved state stays on disk")
            return False
        if self.save_error:
            self.log.info(f"state saved again ({self.counters['save_failures']} saves failed so far, the last: "
                          f"{self.save_error})")
            self.save_error = ""
        self.counters["saves"] += 1
        self.saved_at = self.clock()
        return True

    def restore(self) -> None:
        path = self.state_dir / STATE_FILE
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            self.strategy.load_state_dict(blob["strategy"])
            self.versions = {str(k): int(v) for k, v in blob["versions"].items()}
            self.last_batch = {str(k): int(v) for k, v in blob.get("last_batch", {}).items()}
        except Exception as exc:  # a corrupt or foreign state file: start fresh rather than not at all
            self.log.error(f"cannot restore {path} ({type(exc).__name__}: {exc}): starting without saved state")
            self.versions = {}

    def health(self) -> list[Health]:
        c, w = self.counters, self.events.counts()
        refused = sum(n for k, n in w.items() if k.startswith("refused/"))
        edges = Health("edges", OK, f"{len(self.versions)} edges",
                       {"strategy": self.strategy.summary,
                        **{f"version/{e}": v for e, v in sorted(self.versions.items())}})
        uploads = Health("uploads", WARN if refused or w["dropped_batches"] else OK,
                         f"{refused} refused, {w['dropped_batches']} dropped in 10 s: {self.last_reject}"
                         if refused or w["dropped_batches"] else f"{c['frames']} frames learned from",
                         {**{k: c[k] for k in ("batches", "frames", "rejected_batches", "dropped_batches",
                                               "modules_integrated", "rejected_modules")},
                          "queue": self.queued, "learned_batches": c["learned_batches"],
                          "learned_frames": c["learned_frames"], "learning_cpu_s": f"{self.learn_cpu_s:.1f}",
                          "learning_pace": f"{self.spare:.2f}",
                          "last_reject": self.last_reject})
        updates = Health("updates", OK, f"{c['updates']} sent",
                         {**{k: c[k] for k in ("updates", "registrations", "recompositions", "merges_accepted",
                                               "merges_refused")},
                          **{f"updates_{k}": v for k, v in self.encodings.items()}})
        return [edges, uploads, updates, self._state_health()]

    def _state_health(self) -> Health:
        """Whether what the cloud learned survives a restart: ERROR while saves fail (the last good file stays)."""
        values = {"state_dir": str(self.state_dir or ""), "saves": self.counters["saves"],
                  "save_failures": self.counters["save_failures"], "last_error": self.save_error}
        if self.state_dir is None:
            return Health("state", OK, "not persisted (no state_dir)", values)
        if self.save_error:
            return Health("state", ERROR, f"{self.save_error}; serving from memory", values)
        if self.saved_at is None:
            return Health("state", OK, "not saved yet", values)
        return Health("state", OK, f"saved {self.clock() - self.saved_at:.0f} s ago", values)

    def close(self) -> None:
        """Stop learning and save, in bounded time: a learning step still running after 0.5 s dies with the
        process, and the state saved last (at most ``save_period_s`` old) is what a restart resumes from."""
        self._running.clear()
        with self._queue_lock:
            self._queue_lock.notify_all()
        for worker in self._workers:
            worker.join(timeout=0.5)
        if self.state_dir is not None and not self.save(wait_s=0.5) and not self.save_error:
            self.log.warning("stopping mid learning step: keeping the state saved last")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: the new directory entry is on disk once this returns."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
