"""The edge, without ROS: frames in, predictions out, and everything between the camera and the cloud.

Per frame: the model's view of the frame, forward-only inference (BatchNorm statistics follow the stream),
CEMA's selection; selected views leave in signed PNG batches through a bounded queue under the link's bit
budget (a token bucket). Updates from the cloud are reassembled from chunks, admitted (target, version order,
size, digest, signature, tensor shapes), applied between two frames, or parked while a new model is being
built and then taken in order. A trainable edge also adapts itself (Tent, off the serving path) and sends its
modules up. Registration doubles as a heartbeat, so a dead or restarted cloud is noticed and resynced.

The ROS node and the benchmark drive this one object; it talks to the cloud only through an ``EdgeLink``.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .chunking import ChunkError, Reassembler
from .description import ModelDescription
from .edge_runtime import UpdateError
from .health import ERROR, OK, WARN, EventWindow, Health
from .local_adapt import LocalAdapter
from .messages import (KIND_NAMES, KIND_NORM_AFFINE, MAX_UPLOAD_BATCH, EdgeStatus, LearnedModules, ModelUpdate,
                       Prediction, Profile, Registration, RegistrationReply, SampleBatch, Stamp)
from .preprocess import ImageFormatError, Preprocessor
from .selection import Selector, encode_frames, entropy_one
from .signing import SCHEME, SignatureError, sign
from .tensor_codec import CodecError, pack
from .transport import EdgeLink
from .updates import UpdateRejected, apply_update, check_update

IMAGE_LOG_PERIOD_S = 5.0  # refused camera frames are logged at most this often (all are counted)


@dataclass
class EdgeConfig:
    """The edge's settings (the node's parameters)."""

    edge_id: str = "robot1"
    upload_ratio: float = 0.2
    upload_batch: int = 16
    max_queued_batches: int = 32
    max_update_bytes: int = 64 * 1024 * 1024
    chunk_timeout_s: float = 30.0
    register_period_s: float = 5.0
    status_period_s: float = 1.0
    profile: Profile = field(default_factory=Profile)
    local_batch: int = 16
    module_upload_frames: int = 512
    parked_updates: int = 16

    def check(self) -> None:
        """ValueError naming the setting unless every one is usable."""
        rules = [("edge_id", bool(self.edge_id), "must not be empty"),
                 ("upload_ratio", 0 <= self.upload_ratio <= 1, "must be in [0, 1]"),
                 ("upload_batch", 1 <= self.upload_batch <= MAX_UPLOAD_BATCH, f"must be in [1, {MAX_UPLOAD_BATCH}]"),
                 ("max_queued_batches", self.max_queued_batches >= 1, "must be >= 1"),
                 ("max_update_bytes", self.max_update_bytes > 0, "must be > 0"),
                 ("chunk_timeout_s", self.chunk_timeout_s > 0, "must be > 0"),
                 ("register_period_s", self.register_period_s > 0, "must be > 0"),
                 ("local_batch", 2 <= self.local_batch <= 256, "must be in [2, 256]"),
                 ("module_upload_frames", self.module_upload_frames >= 1, "must be >= 1")]
        for name, ok, why in rules:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} refused: {why}")


class EdgeAgent:
    """One edge. ``threaded`` (the node): new models are built and local adaptation runs on worker threads,
    frames are never held up; off (the benchmark, tests): both happen inline, deterministically."""

    def __init__(self, runtime, description: ModelDescription, link: EdgeLink, config: EdgeConfig | None = None,
                 *, cloud_key=None, private_key=None, clock: Callable[[], float] = time.monotonic,
                 log: logging.Logger | None = None, threaded: bool = True) -> None:
        self.config = config or EdgeConfig()
        self.config.check()
        self.runtime, self.description, self.link = runtime, description, link
        self.cloud_key, self.private_key = cloud_key, private_key
        self.clock, self.threaded = clock, threaded
        self.log = log or logging.getLogger(f"eclm_ros.edge.{self.config.edge_id}")
        self.preprocess = Preprocessor(description)
        self._input = np.empty(description.input_shape(), np.float32)
        self.selector = Selector(description.num_classes, target_ratio=self.config.upload_ratio)
        self.version = 0
        self.registered_version = 0  # the cloud's version for this edge at its last registration
        self.spec = description.structure
        self.chunks = Reassembler(max_payloads=4, max_bytes=2 * self.config.max_update_bytes,
                                  timeout_s=self.config.chunk_timeout_s, clock=clock)
        self.pending: list[tuple] = []
        self.queue: deque[SampleBatch] = deque(maxlen=self.config.max_queued_batches)
        # wall-clock microseconds: a restarted edge numbers its batches above the last run's, so the cloud can
        # refuse any batch number it has seen (a replayed upload) without the edge storing anything
        self.batch_seq = time.time_ns() // 1000
        self.budget_bps = float("inf")  # until the link is measured, it is not limited
        self.link_up: bool | None = None  # as the bandwidth monitor last said (None: never measured up)
        self.tokens = 0.0
        self.swapping: tuple | None = None  # (future, update) of a model being built off the serving path
        self.parked: deque[ModelUpdate] = deque(maxlen=self.config.parked_updates)
        self.counters = Counter(frames=0, uploaded=0, uploaded_bytes=0, applied=0, rejected_updates=0, rejected_images=0,
                                dropped_batches=0, batches_sent=0, ignored_updates=0, local_steps=0,
                                modules_sent=0, adapt_skipped=0)
        self.reasons: Counter = Counter()  # refusals per kind, since start
        self._image_log = (-float("inf"), 0)  # when a refused image was last logged, and the count then
        self.events = EventWindow(10.0, clock)  # frames, refusals, drops over the last 10 s (health)
        self.last_reject = ""
        self.latencies: deque[float] = deque(maxlen=200)
        self.sent_at: dict[int, float] = {}  # batch_seq -> when it left (the newest 256), for update latency
        self.update_latencies: deque[float] = deque(maxlen=1000)  # s from an upload to the update learned from it
        self.entropies: deque[float] = deque(maxlen=200)
        self.frame_times: deque[float] = deque(maxlen=200)
        self.registered = False
        self._register_sent: float | None = None  # time of the unanswered registration
        self._last_register = -float("inf")
        self._last_status = -float("inf")
        self._last_tick = clock()
        self._lock = threading.RLock()  # link callbacks may come from another thread than frames
        self.adapter = LocalAdapter(runtime.model, self.config.local_batch) if self.config.profile.trainable else None
        self.adapted = 0
        self._adapt_lock = threading.Lock()
        self._adapt_queue: queue.Queue = queue.Queue(maxsize=4 * self.config.local_batch)
        self._stopping = threading.Event()
        self._adapt_thread = None
        if self.adapter is not None and threaded:
            self._adapt_thread = threading.Thread(target=self._adapt_loop, name="eclm-adapt", daemon=True)
            self._adapt_thread.start()

    def configure(self, **changes) -> None:
        """Change settings while serving (a node's run-time parameters); all are checked before any applies,
        ValueError names the one refused. A new profile is sent with the next heartbeat (the cloud then
        re-derives the sub-model); the adaptation batch cannot change."""
        new = replace(self.config, **changes)
        new.check()
        if new.local_batch != self.config.local_batch or new.profile.trainable != self.config.profile.trainable:
            raise ValueError("local_batch and the trainable profile are fixed at start-up")
        with self._lock:
            old, self.config = self.config, new
            self.selector.target_ratio = new.upload_ratio
            if new.max_queued_batches != old.max_queued_batches:
                self.queue = deque(self.queue, maxlen=new.max_queued_batches)
            self.chunks.timeout_s, self.chunks.max_bytes = new.chunk_timeout_s, 2 * new.max_update_bytes
            if new.profile != old.profile:
                self._last_register = -float("inf")

    # -- frames ---------------------------------------------------------------------------------------
    def on_frame(self, image: np.ndarray, stamp: Stamp = (0, 0), channel_order: str = "rgb") -> Prediction | None:
        """Predict one camera frame (uint8 HxW or HxWx3, any size); None when the frame cannot be model input
        (counted and reported, never raised)."""
        t0 = time.perf_counter()
        if self.swapping is not None:
            self.finish_swap()
        try:
            view, _ = self.preprocess.frame_input(image, channel_order, out=self._input[0])
        except ImageFormatError as exc:
            self.reject_frame(str(exc))
            return None
        probs = self.runtime.infer(self._input)[0]
        cls = int(probs.argmax())
        ent = entropy_one(probs)
        selected = self.selector.select_one(probs, ent)
        self.counters["frames"] += 1
        self.events.add("frames")
        if self.adapter is not None:
            self._queue_adaptation(self._input[0].copy())
        self.latencies.append((time.perf_counter() - t0) * 1000)
        self.entropies.append(ent)
        self.frame_times.append(self.clock())
        if selected:
            self.pending.append((stamp, view, cls, ent, probs))
            if len(self.pending) >= self.config.upload_batch:
                self._enqueue_batch()
        return Prediction(cls, self.description.labels[cls], float(probs[cls]), ent, self.version, selected, probs)

    def reject_frame(self, reason: str) -> None:
        """A camera message that could not become a frame (also the node's own decoding failures). Logged at
        most every 5 s with the count since (a bad camera at 30 Hz must not flood the log; every refusal is
        counted in health())."""
        self.counters["rejected_images"] += 1
        self._refuse("image", f"image: {reason}", warn=False)
        now, (logged_at, logged_count) = self.clock(), self._image_log
        if now - logged_at >= IMAGE_LOG_PERIOD_S:
            since = self.counters["rejected_images"] - logged_count - 1
            self.log.warning(f"rejected image: {reason}" + (f" ({since} more since the last report)" if since else ""))
            self._image_log = (now, self.counters["rejected_images"])

    def _refuse(self, kind: str, text: str, warn: bool = True) -> None:
        self.reasons[kind] += 1
        self.events.add(f"refused/{kind}")
        self.last_reject = text
        if warn:
            self.log.warning(f"rejected {text}")

    # -- uploads --------------------------------------------------------------------------------------
    def _enqueue_batch(self) -> None:
        stamps, views, classes, ents, probs = zip(*self.pending)
        self.pending = []
        with self._lock:
            self.batch_seq += 1
            batch = SampleBatch(self.config.edge_id, self.batch_seq, self.version, "png", encode_frames(views),
                                [(v.shape[1], v.shape[0], 1 if v.ndim == 2 else v.shape[2]) for v in views],
                                list(stamps), [int(c) for c in classes], [float(e) for e in ents],
                                np.stack(probs).astype(np.float32))
            if self.private_key is not None:
                batch.signature_scheme, batch.signature = SCHEME, sign(self.private_key, batch.signed_bytes())
            if len(self.queue) == self.queue.maxlen:
                self.counters["dropped_batches"] += 1
                self.events.add("dropped_batches")
            self.queue.append(batch)
            self.flush()

    def flush(self) -> None:
        """Send queued uploads while the cloud is registered and the link budget allows."""
        with self._lock:
            while self.queue and self.registered:
                batch = self.queue[0]
                bits = 8 * sum(len(f) for f in batch.frames)
                if self.budget_bps != float("inf"):
                    # the budget is spent (none at all while the link is down): the batch waits; one larger than
                    # the bucket leaves once it is full and is paid back from later ticks (tokens go negative), so
                    # every size keeps the rate
                    if self.budget_bps <= 0 or (bits > self.tokens and self.tokens < 2.0 * self.budget_bps):
                        break
                    self.tokens -= bits
                self.queue.popleft()
                self.link.send_samples(batch)
                self.sent_at[batch.batch_seq] = self.clock()
                if len(self.sent_at) > 256:
                    del self.sent_at[next(iter(self.sent_at))]
                self.counters["batches_sent"] += 1
                self.counters["uploaded"] += len(batch.frames)
                self.counters["uploaded_bytes"] += bits // 8

    def on_link(self, budget_bps: float, link_up: bool = True) -> None:
        """The measured link: its upload budget in bit/s (infinite: not measured yet, no limit), and whether it is
        up (down: no budget). A link that comes back is a reason to check in with the cloud at once (the heartbeat
        registration), not a period later: updates sent meanwhile may be gone, and the queued uploads wait for it."""
        if np.isnan(budget_bps) or budget_bps < 0:
            self.log.warning(f"ignored upload budget {budget_bps} bit/s")
            return
        with self._lock:
            if link_up and self.link_up is False:
                self.log.info("link back: checking in with the cloud")
                self._register_sent, self._last_register = None, -float("inf")
            if link_up or self.link_up is not None:  # a link not yet measured up has not gone down
                self.link_up = link_up
            self.budget_bps = float(budget_bps) if link_up else 0.0

    # -- updates --------------------------------------------------------------------------------------
    def on_update(self, update: ModelUpdate) -> None:
        """An update (or one chunk of it) from the cloud: applied, parked behind a swap, or refused."""
        with self._lock:
            if self.swapping is not None:  # a new model is being built: its successors wait for it
                self.parked.append(update)
                return
            header = update.header
            if header.target_edge not in (self.config.edge_id, "*"):  # another robot's: counted, not an error
                self.counters["ignored_updates"] += 1
                return
            what = f"update v{header.version} ({header.update_id[:8]})"
            try:
                bundle = update.bundle
                if update.chunk_count != 1:  # reassembled first; the digest then checks the whole payload
                    payload = self.chunks.add(header.update_id, update.chunk_index, update.chunk_count,
                                              bundle.payload)
                    self._take_dropped_chunks()
                    if payload is None:
                        return
                    bundle = replace(bundle, payload=payload)
                check_update(header, bundle, edge_id=self.config.edge_id, current_version=self.version,
                             public_key=self.cloud_key, max_bytes=self.config.max_update_bytes,
                             min_version=self.registered_version)
                swap = apply_update(self.runtime, header.kind, header.submodel_spec, self.spec, bundle,
                                    self.config.max_update_bytes,
                                    swap=self.runtime.swap_async if self.threaded else self.runtime.swap)
            except (UpdateRejected, UpdateError, CodecError, ChunkError, SignatureError, ValueError, TypeError,
                    KeyError) as exc:
                self._reject_update(what, exc)
                return
            if swap is not None:  # served from the first frame after the new model is ready
                self.swapping = (swap, update)
                return
            self._applied(update)

    def _take_dropped_chunks(self) -> None:
        for update_id, reason in self.chunks.take_dropped():
            self._reject_update(f"chunked update {update_id[:8]}", reason)

    def _reject_update(self, what: str, reason: object) -> None:
        self.counters["rejected_updates"] += 1
        self._refuse(_refusal_kind(reason), f"{what}: {reason}")

    def finish_swap(self) -> None:
        """Between two frames: once the new model is built it serves and its version counts; the updates that
        arrived meanwhile are then taken in order."""
        with self._lock:
            if self.swapping is None or not self.swapping[0].done():
                return
            future, update = self.swapping
            self.swapping = None
            try:
                future.result()
            except UpdateError as exc:  # the old model is still serving
                self._reject_update(f"update v{update.header.version} ({update.header.update_id[:8]})", exc)
            else:
                self._applied(update)
            while self.parked and self.swapping is None:
                self.on_update(self.parked.popleft())

    def _applied(self, update: ModelUpdate) -> None:
        header = update.header
        self.version, self.spec = header.version, header.submodel_spec
        self.counters["applied"] += 1
        self._time_learning(update.learned_batch_seq)
        if self.adapter is not None and header.kind != KIND_NORM_AFFINE:  # a new structure or weights
            with self._adapt_lock:
                self.adapter.rebase(self.runtime.model)
                self.adapted = 0
        self.log.info(f"applied {KIND_NAMES[header.kind]} update, now serving version {self.version}")

    def _time_learning(self, learned_seq: int) -> None:
        """Upload-to-update latency: from sending the newest batch an applied update learned from, to now."""
        sent = self.sent_at.get(learned_seq)
        while self.sent_at and next(iter(self.sent_at)) <= learned_seq:  # what it learned is served now
            del self.sent_at[next(iter(self.sent_at))]
        if sent is not None:
            self.update_latencies.append(self.clock() - sent)

    # -- local adaptation (trainable profile) ----------------------------------------------------------
    def _queue_adaptation(self, x: np.ndarray) -> None:
        if not self.threaded:
            self._adapt(x)
            return
        try:
            self._adapt_queue.put_nowait(x)
        except queue.Full:  # adaptation lags the camera: skip frames, never delay serving
            self.counters["adapt_skipped"] += 1

    def _adapt_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                x = self._adapt_queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self._adapt(x)

    def _adapt(self, x: np.ndarray) -> None:
        """One frame into Tent on the adapter's copy; a finished step is served at once, and the adapted modules
        go up every ``module_upload_frames`` frames."""
        with self._adapt_lock:
            state = self.adapter.add(x)
            if state is None:
                return
            try:
                self.runtime.apply_affine({k: v.numpy() for k, v in state.items()})
            except UpdateError as exc:  # cannot happen for a model's own state, but never stop serving
                self.log.error(f"local adaptation not applied: {exc}")
                return
            self.counters["local_steps"] += 1
            self.adapted += self.adapter.batch_size
            if self.adapted >= self.config.module_upload_frames and self.registered:
                self._send_modules()

    def _send_modules(self) -> None:
        msg = LearnedModules(self.config.edge_id, self.version, self.spec, self.adapted,
                             pack(self.adapter.module_state(), encoding="fp16"))
        if self.private_key is not None:
            msg.signature_scheme, msg.signature = SCHEME, sign(self.private_key, msg.signed_bytes())
        self.link.send_modules(msg)
        self.counters["modules_sent"] += 1
        self.adapted = 0

    # -- the link: heartbeat, budget, status ----------------------------------------------------------
    def tick(self) -> None:
        """Periodic work (the node calls it every 0.5 s, the benchmark every frame): the token bucket, the
        registration heartbeat, a finished swap, stale chunks, the status report and queued uploads."""
        now = self.clock()
        dt, self._last_tick = max(now - self._last_tick, 0.0), now
        with self._lock:
            if self.budget_bps != float("inf"):  # at most 2 s of budget saved up
                self.tokens = min(self.tokens + dt * self.budget_bps, 2.0 * self.budget_bps)
            self.finish_swap()
            self.chunks.expire()
            self._take_dropped_chunks()
            self._heartbeat(now)
            if now - self._last_status >= self.config.status_period_s:
                self._last_status = now
                self.link.send_status(self.status())
            self.flush()

    def _heartbeat(self, now: float) -> None:
        heartbeat = self.config.register_period_s
        if self._register_sent is not None:
            if now - self._register_sent > 3 * heartbeat:  # no answer: the cloud is gone or hung
                self._register_sent = None
                self._set_registered(False)
        elif not self.link.cloud_ready():
            self._set_registered(False)
        elif not self.registered or now - self._last_register > heartbeat:
            self._register_sent = self._last_register = now
            sent = now
            self.link.register(Registration(self.config.edge_id, self.config.profile, self.version),
                               lambda reply: self._on_registered(reply, sent))

    def _on_registered(self, reply: RegistrationReply, sent: float) -> None:
        with self._lock:
            if self._register_sent != sent:  # answered after it was given up
                return
            self._register_sent = None
            if not reply.accepted:
                self.log.error(f"registration refused: {reply.message}")
                return
            if not self.registered:
                self.log.info(f"registered with the cloud: version {reply.version} ({reply.message})")
            self.registered_version = max(self.registered_version, reply.version)
            self._set_registered(True)
            self.flush()

    def _set_registered(self, registered: bool) -> None:
        if self.registered and not registered:
            self.log.warning("cloud unreachable: serving with the last good model, queueing uploads")
        self.registered = registered

    def fps(self) -> float:
        if len(self.frame_times) < 2:
            return 0.0
        return (len(self.frame_times) - 1) / max(self.frame_times[-1] - self.frame_times[0], 1e-6)

    def status(self) -> EdgeStatus:
        c = self.counters
        return EdgeStatus(self.config.edge_id, self.config.profile, self.version, self.spec, self.fps(),
                          float(np.median(self.latencies)) if self.latencies else 0.0,
                          c["uploaded"] / max(c["frames"], 1), c["frames"], c["uploaded"], c["applied"],
                          c["rejected_updates"], len(self.queue),
                          float(np.mean(self.entropies)) if self.entropies else 0.0)

    def health(self) -> list[Health]:
        """One status per concern, levels from what happened over the last 10 s."""
        now, c, w = self.clock(), self.counters, self.events
        frames, bad = w.count("frames"), w.count("refused/image")
        last_frame = self.frame_times[-1] if self.frame_times else None
        if last_frame is None and not bad:
            camera = Health("camera input", WARN, "no frames yet")
        elif last_frame is None or now - last_frame > 5.0:
            camera = Health("camera input", ERROR, "no frames served for 5 s" + (
                f" ({bad} refused)" if bad else ""))
        elif bad > 0.05 * (frames + bad):
            camera = Health("camera input", WARN, f"{bad} of {frames + bad} frames refused in 10 s")
        else:
            camera = Health("camera input", OK, f"{self.fps():.1f} fps")
        camera.values.update(frames=c["frames"], rejected_images=c["rejected_images"], fps=f"{self.fps():.1f}",
                             latency_p50_ms=f"{np.median(self.latencies) if self.latencies else 0:.2f}")
        model = Health("model", OK, f"serving version {self.version}",
                       {"model_version": self.version, "building": self.swapping is not None,
                        "local_steps": c["local_steps"], "adapt_skipped": c["adapt_skipped"], "spec": self.spec[:200]})
        link = Health("cloud link", OK if self.registered else WARN,
                      "registered" if self.registered else "cloud unreachable: serving the last good model",
                      {"upload_budget_bps": f"{self.budget_bps:.0f}"})
        dropped = w.count("dropped_batches")
        uploads = Health("uploads", WARN if dropped else OK,
                         f"{dropped} batches dropped in 10 s (queue full)" if dropped else
                         f"ratio {c['uploaded'] / max(c['frames'], 1):.3f}",
                         {"uploaded": c["uploaded"], "uploaded_bytes": c["uploaded_bytes"],
                          "batches_sent": c["batches_sent"], "queue": len(self.queue),
                          "dropped_batches": c["dropped_batches"], "modules_sent": c["modules_sent"]})
        refused = sum(n for kind, n in w.counts().items() if kind.startswith("refused/") and kind != "refused/image")
        timed = np.asarray(self.update_latencies) * 1000
        updates = Health("updates", WARN if refused else OK,
                         f"{refused} refused in 10 s: {self.last_reject}" if refused else f"{c['applied']} applied",
                         {"applied": c["applied"], "rejected_updates": c["rejected_updates"],
                          "learned_uploads": len(timed),
                          "upload_to_update_p50_ms": f"{np.percentile(timed, 50) if len(timed) else 0:.0f}",
                          "upload_to_update_p95_ms": f"{np.percentile(timed, 95) if len(timed) else 0:.0f}",
                          "ignored_updates": c["ignored_updates"], "last_reject": self.last_reject,
                          **{f"refused/{k}": n for k, n in sorted(self.reasons.items()) if k != "image"}})
        return [camera, model, link, uploads, updates]

    def close(self) -> None:
        """Stop the adaptation thread (the runtime's swap thread ends with the process)."""
        self._stopping.set()
        if self._adapt_thread is not None:
            self._adapt_thread.join(timeout=0.5)


def _refusal_kind(reason: object) -> str:
    """The counter a refusal goes to: the failed check for an UpdateRejected, else the layer that refused."""
    if isinstance(reason, UpdateRejected):
        return reason.kind
    for cls, kind in ((ChunkError, "chunks"), (CodecError, "codec"), (SignatureError, "signature"),
                      (UpdateError, "model")):
        if isinstance(reason, cls):
            return kind
    return "chunks" if isinstance(reason, str) else "invalid"  # the reassembler gives up with a text
