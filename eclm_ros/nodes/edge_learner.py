"""edge_learner: infer on any camera topic, upload the frames worth learning from, take cloud updates.

Subscribes `image` (remap it to your camera), publishes `predictions`; talks to the cloud on
`/eclm/samples`, `/eclm/model_updates`, `/eclm/edge_status` and the `/eclm/register_edge` service; follows
the link budget on `bandwidth`. It keeps serving with its last good model whatever arrives or fails.
"""
import json
import queue
import threading
import time
from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import Image

from eclm_ros.core.bandwidth import LinkEstimate, upload_budget_bps
from eclm_ros.core.chunking import Reassembler
from eclm_ros.core.data import FASHION_MNIST_CLASSES
from eclm_ros.core.edge_runtime import UpdateError, make_runtime
from eclm_ros.core.local_adapt import LocalAdapter
from eclm_ros.core.norm import EMA_MOMENTUM
from eclm_ros.core.preprocess import ImageFormatError, to_model_input, to_model_view
from eclm_ros.core.selection import Selector, encode_frames, entropy_one
from eclm_ros.core.signing import SCHEME, SignatureError, load_private_key, load_public_key, sign, upload_bytes
from eclm_ros.core.tensor_codec import CodecError, pack
from eclm_ros.core.training import load_edge_model
from eclm_ros.core.updates import (KIND_NAMES, KIND_NORM_AFFINE, UpdateHeader, UpdateRejected, apply_update,
                                   check_update)
from eclm_ros.msg import (BandwidthEstimate, DeviceProfile, EdgeStatus, EncodedFrame, LearnedModules, ModelUpdate,
                          Prediction, SampleBatch)
from eclm_ros.ros_io import (RELIABLE_QOS, SENSOR_QOS, UPDATE_QOS, Diagnostics, ImageError, NodeParameters,
                            bundle_signed_parts, bundle_to_msg, image_to_numpy, msg_to_bundle, run_node)
from eclm_ros.srv import RegisterEdge


class EdgeLearner(Node):
    def __init__(self) -> None:
        super().__init__("edge_learner")
        p = NodeParameters(self)
        self.edge_id = p.declare("edge_id", "robot1", "this edge's id on the edge-cloud link", bool, "not empty",
                                 read_only=True)
        quick = p.declare("quick_models", False, "use the tiny --quick models (tests)")
        cache = p.declare("model_cache", "", "checkpoint cache directory ('' = $ECLM_ROS_CACHE or ~/.cache/eclm_ros)")
        self.upload_ratio = p.declare("upload_ratio", 0.2, "share of frames the edge may upload",
                                      lambda v: 0 <= v <= 1, "must be in [0, 1]")
        self.upload_batch = p.declare("upload_batch", 16, "frames per SampleBatch", lambda v: 1 <= v <= 1024,
                                      "must be in [1, 1024]")
        self.max_queue = p.declare("max_queued_batches", 32, "uploads kept while the cloud is unreachable",
                                   lambda v: v >= 1, "must be >= 1")
        momentum = p.declare("bn_momentum", EMA_MOMENTUM, "per-frame EMA of BatchNorm statistics (forward-only adaptation)",
                             lambda v: 0 < v <= 1, "must be in (0, 1]")
        key = p.declare("cloud_public_key", "", "PEM file of the cloud's Ed25519 key; when set, unsigned or "
                        "wrongly signed updates are refused")
        own_key = p.declare("private_key", "", "PEM file of this edge's Ed25519 key that signs its uploads ('' = "
                            "unsigned; a cloud with edge keys refuses them)")
        self.max_update_bytes = p.declare("max_update_bytes", 64 * 1024 * 1024, "largest update accepted",
                                          lambda v: v > 0, "must be > 0")
        cloud = p.declare("cloud_namespace", "/eclm", "namespace of the cloud coordinator's topics and services")
        self.heartbeat = p.declare("register_period_s", 5.0, "re-registration heartbeat: a restarted cloud is "
                                   "noticed within this time", lambda v: v > 0, "must be > 0")
        self.profile = DeviceProfile(
            runtime=DeviceProfile.RUNTIME_FORWARD_ONLY,
            max_params=p.declare("max_params", 0, "sub-model parameter budget (0 = the cloud's default budget)",
                                 lambda v: v >= 0, "must be >= 0"),
            max_macs=p.declare("max_macs", 0, "sub-model multiply-accumulates per frame (0 = default budget)",
                               lambda v: v >= 0, "must be >= 0"),
            max_latency_ms=p.declare("max_latency_ms", 0.0, "per-frame latency budget (0 = none)",
                                     lambda v: v >= 0, "must be >= 0"),
            device=p.declare("device", "generic", "device name reported to the cloud (e.g. jetson-orin-nano)"))
        self.public_key = load_public_key(key) if key else None
        self.private_key = load_private_key(own_key) if own_key else None
        adapt = p.declare("adapt_locally", False, "trainable profile: adapt the sub-model on the edge too (Tent, off "
                          "the inference path) and send its modules up for the cloud to integrate (ECLM)",
                          read_only=True)
        local_batch = p.declare("local_batch", 16, "frames per local adaptation step", lambda v: 2 <= v <= 256,
                                "must be in [2, 256]", read_only=True)
        self.module_upload_frames = p.declare("module_upload_frames", 512, "send the adapted modules up every this "
                                              "many adapted frames", lambda v: v >= 1, "must be >= 1")
        if adapt:
            self.profile.runtime = DeviceProfile.RUNTIME_TRAINABLE

        runtime = p.declare("runtime", "onnx", "inference runtime: onnx (ONNX Runtime, forward-only devices) or "
                            "torch", lambda v: v in ("onnx", "torch"), "onnx or torch", read_only=True)
        threads = p.declare("runtime_threads", 1, "inference threads (1 suits a small CPU shared with the robot)",
                            lambda v: v >= 1, "must be >= 1", read_only=True)
        chunk_timeout = p.declare("chunk_timeout_s", 30.0, "a chunked update still incomplete after this long is "
                                  "given up (and counted as rejected)", lambda v: v > 0, "must be > 0")
        self.runtime = make_runtime(runtime, load_edge_model(quick, cache or None), momentum, threads)
        self.chunks = Reassembler(max_payloads=4, max_bytes=2 * self.max_update_bytes, timeout_s=chunk_timeout)
        self.prediction = Prediction()  # reused: publish() serialises it at once
        self.adapter = LocalAdapter(self.runtime.model, local_batch) if adapt else None
        self.adapt_queue: queue.Queue = queue.Queue(maxsize=4 * local_batch)
        self.adapt_lock = threading.Lock()
        self.adapted = 0
        self.swapping = None  # (future, update) of a model being built off the inference path
        self.parked: deque[ModelUpdate] = deque(maxlen=16)
        self.version = 0
        self.spec = json.dumps({"module_ids": [list(s) for s in self.runtime.model.spec.stages]})
        self.selector = Selector(10, target_ratio=self.upload_ratio)
        self.input = np.empty((1, 1, 28, 28), np.float32)
        self.pending: list[tuple] = []
        self.queue: deque[SampleBatch] = deque(maxlen=self.max_queue)
        self.budget_bps = float("inf")  # until the bandwidth monitor reports, the link is not limited
        self.tokens = 0.0
        self.counters = dict(frames=0, uploaded=0, applied=0, rejected_updates=0, rejected_images=0,
                             dropped_batches=0, batches_sent=0, ignored_updates=0, local_steps=0,
                             modules_sent=0, adapt_skipped=0)
        self.last_reject = ""
        self.latencies: deque[float] = deque(maxlen=200)
        self.entropies: deque[float] = deque(maxlen=200)
        self.frame_times: deque[float] = deque(maxlen=200)
        self.registered = False
        self.register_future = None
        self.register_sent = 0.0

        self.pred_pub = self.create_publisher(Prediction, "predictions", RELIABLE_QOS)
        self.sample_pub = self.create_publisher(SampleBatch, f"{cloud}/samples", RELIABLE_QOS)
        self.status_pub = self.create_publisher(EdgeStatus, f"{cloud}/edge_status", RELIABLE_QOS)
        self.modules_pub = self.create_publisher(LearnedModules, f"{cloud}/learned_modules", RELIABLE_QOS)
        self.create_subscription(Image, "image", self.on_image, SENSOR_QOS)
        self.create_subscription(ModelUpdate, f"{cloud}/model_updates", self.on_update, UPDATE_QOS)
        self.create_subscription(BandwidthEstimate, "bandwidth", self.on_bandwidth, RELIABLE_QOS)
        self.register_client = self.create_client(RegisterEdge, f"{cloud}/register_edge")
        self.diagnostics = Diagnostics(self, "edge learner")
        self.create_timer(1.0, self.on_status)
        self.create_timer(0.05, self.finish_swap)  # also when no frames come
        self.stopping = False
        self.adapt_thread = threading.Thread(target=self.adapt_loop, name="eclm-adapt", daemon=True) \
            if self.adapter is not None else None
        if self.adapt_thread is not None:
            self.adapt_thread.start()
        self.create_timer(0.5, self.on_link)
        self.get_logger().info(f"edge {self.edge_id} serving {self.spec}, waiting for the cloud")

    def on_image(self, msg: Image) -> None:
        t0 = time.perf_counter()
        if self.swapping is not None:
            self.finish_swap()
        try:
            small = to_model_view(image_to_numpy(msg), "bgr" if msg.encoding == "bgr8" else "rgb")
            to_model_input(small, out=self.input[0])  # the model's view is also what an upload carries
        except (ImageError, ImageFormatError) as exc:
            self.counters["rejected_images"] += 1
            self.last_reject = f"image: {exc}"
            self.get_logger().warning(f"rejected image: {exc}", throttle_duration_sec=5.0)
            return
        probs = self.runtime.infer(self.input)[0]
        cls = int(probs.argmax())
        ent = entropy_one(probs)
        selected = self.selector.select_one(probs, ent)
        pred = self.prediction
        pred.header, pred.class_id, pred.label = msg.header, cls, FASHION_MNIST_CLASSES[cls]
        pred.score, pred.entropy, pred.model_version, pred.selected = float(probs[cls]), ent, self.version, selected
        self.pred_pub.publish(pred)
        self.counters["frames"] += 1
        if self.adapter is not None:
            try:
                self.adapt_queue.put_nowait(self.input[0].copy())
            except queue.Full:  # adaptation lags the camera: skip frames, never delay serving
                self.counters["adapt_skipped"] += 1
        self.latencies.append((time.perf_counter() - t0) * 1000)
        self.entropies.append(ent)
        self.frame_times.append(time.monotonic())
        if selected:
            self.pending.append((msg.header.stamp, small, cls, ent, probs))
            if len(self.pending) >= self.upload_batch:
                self.enqueue_batch()

    def enqueue_batch(self) -> None:
        stamps, grays, classes, ents, probs = zip(*self.pending)
        self.pending = []
        batch = SampleBatch(edge_id=self.edge_id, batch_seq=self.counters["batches_sent"] + len(self.queue) + 1,
                            model_version=self.version, encoding="png", num_classes=10)
        batch.header.stamp = self.get_clock().now().to_msg()
        batch.stamps = list(stamps)
        batch.frames = [EncodedFrame(width=g.shape[1], height=g.shape[0], channels=1, data=blob)
                        for g, blob in zip(grays, encode_frames(np.stack([g for g in grays])
                                                                if len({g.shape for g in grays}) == 1 else grays))]
        batch.predicted_class = [int(c) for c in classes]
        batch.entropy = [float(e) for e in ents]
        batch.probabilities = np.concatenate(probs).astype(np.float32).tolist()
        if self.private_key is not None:
            batch.signature_scheme = SCHEME
            batch.signature = sign(self.private_key, upload_bytes(
                "samples", self.edge_id, [batch.batch_seq, batch.model_version, batch.encoding],
                [bytes(f.data) for f in batch.frames]))
        if len(self.queue) == self.queue.maxlen:
            self.counters["dropped_batches"] += 1
        self.queue.append(batch)
        self.flush()

    def flush(self) -> None:
        """Send queued uploads while the cloud is registered and the link budget allows."""
        while self.queue and self.registered:
            batch = self.queue[0]
            bits = 8 * sum(len(f.data) for f in batch.frames)
            if self.budget_bps != float("inf"):
                if bits > self.tokens:  # the link's budget is spent: the batch waits for the next tick
                    break
                self.tokens -= bits
            self.queue.popleft()
            self.sample_pub.publish(batch)
            self.counters["batches_sent"] += 1
            self.counters["uploaded"] += len(batch.frames)

    def on_bandwidth(self, msg: BandwidthEstimate) -> None:
        est = LinkEstimate(msg.uplink_bps, msg.downlink_bps, msg.rtt_ms, msg.rtt_p95_ms, msg.loss, msg.link_up)
        self.budget_bps = msg.upload_budget_bps if msg.link_up and msg.upload_budget_bps > 0 else \
            upload_budget_bps(est)

    def on_update(self, msg: ModelUpdate) -> None:
        if self.swapping is not None:  # a new model is being built: its successors wait for it
            self.parked.append(msg)
            return
        header = UpdateHeader(msg.target_edge, msg.update_id, msg.version, msg.base_version, msg.kind,
                              msg.submodel_spec, msg.signature_scheme, msg.key_id, bytes(msg.signature))
        if msg.target_edge not in (self.edge_id, "*"):  # another robot's update: counted, not an error
            self.counters["ignored_updates"] += 1
            self.get_logger().info(f"ignored update v{msg.version} for {msg.target_edge!r}", throttle_duration_sec=10.0)
            return
        try:
            payload = None
            if msg.chunk_count != 1:  # reassembled first; the digest then checks the whole payload
                payload = self.chunks.add(msg.update_id, msg.chunk_index, msg.chunk_count, msg.bundle.payload)
                for update_id, reason in self.chunks.take_dropped():
                    self.reject(f"chunked update {update_id[:8]}", reason)
                if payload is None:
                    return
            bundle = msg_to_bundle(msg.bundle, payload)
            check_update(header, bundle, edge_id=self.edge_id, current_version=self.version,
                         public_key=self.public_key, max_bytes=self.max_update_bytes)
            swap = apply_update(self.runtime, msg.kind, msg.submodel_spec, self.spec, bundle, self.max_update_bytes,
                                swap=self.runtime.swap_async)
        except (UpdateRejected, UpdateError, CodecError, SignatureError, ValueError, TypeError, KeyError) as exc:
            self.reject(f"update v{msg.version} ({msg.update_id[:8]})", exc)
            return
        if swap is not None:  # served from the first frame after the new model is ready (finish_swap)
            self.swapping = (swap, msg)
            return
        self.applied(msg)

    def reject(self, what: str, reason: object) -> None:
        """An update that will not be served: counted, reported on /diagnostics, logged with the reason."""
        self.counters["rejected_updates"] += 1
        self.last_reject = f"{what}: {reason}"
        self.get_logger().warning(f"rejected {self.last_reject}")

    def finish_swap(self) -> None:
        """Between two frames: once the new model is built, it serves and its version counts; the updates
        that arrived meanwhile are taken in order."""
        if self.swapping is None or not self.swapping[0].done():
            return
        future, msg = self.swapping
        self.swapping = None
        try:
            future.result()
        except UpdateError as exc:  # the old model is still serving
            self.reject(f"update v{msg.version} ({msg.update_id[:8]})", exc)
        else:
            self.applied(msg)
        while self.parked and self.swapping is None:
            self.on_update(self.parked.popleft())

    def applied(self, msg: ModelUpdate) -> None:
        self.version = msg.version
        self.spec = msg.submodel_spec
        self.counters["applied"] += 1
        if self.adapter is not None and msg.kind != KIND_NORM_AFFINE:  # a new structure or weights: adapt from it
            with self.adapt_lock:
                self.adapter.rebase(self.runtime.model)
                self.adapted = 0
        self.get_logger().info(f"applied {KIND_NAMES[msg.kind]} update, now serving version {self.version}",
                               throttle_duration_sec=2.0)

    def adapt_loop(self) -> None:
        """Local adaptation thread (trainable profile): Tent steps on served frames, served at once; the adapted
        modules go up every ``module_upload_frames`` frames."""
        while self.adapter is not None and not self.stopping:
            try:
                x = self.adapt_queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with self.adapt_lock:
                state = self.adapter.add(x)
                if state is None:
                    continue
                try:
                    self.runtime.apply_affine({k: v.numpy() for k, v in state.items()})
                except UpdateError as exc:  # cannot happen for a model's own state, but never stop serving
                    self.get_logger().error(f"local adaptation not applied: {exc}")
                    continue
                self.counters["local_steps"] += 1
                self.adapted += self.adapter.batch_size
                if self.adapted >= self.module_upload_frames and self.registered:
                    self.send_modules()

    def send_modules(self) -> None:
        bundle = pack(self.adapter.module_state(), encoding="fp16")
        msg = LearnedModules(edge_id=self.edge_id, base_version=self.version, submodel_spec=self.spec,
                             frames=self.adapted)
        msg.header.stamp = self.get_clock().now().to_msg()
        bundle_to_msg(bundle, msg.bundle)
        if self.private_key is not None:
            msg.signature_scheme = SCHEME
            msg.signature = sign(self.private_key, upload_bytes(
                "modules", self.edge_id, [msg.base_version, msg.submodel_spec, msg.frames],
                bundle_signed_parts(msg.bundle)))
        self.modules_pub.publish(msg)
        self.counters["modules_sent"] += 1
        self.adapted = 0

    def close(self) -> None:
        self.stopping = True
        if self.adapt_thread is not None:
            self.adapt_thread.join(timeout=5)

    def on_link(self) -> None:
        """Register with the cloud and keep re-registering as a heartbeat: a dead or restarted cloud is noticed
        (a call that is not answered in time), uploads queue meanwhile, and serving never stops."""
        if self.budget_bps != float("inf"):  # token bucket: 0.5 s of budget per tick, at most 2 s saved
            self.tokens = min(self.tokens + 0.5 * self.budget_bps, 2.0 * self.budget_bps)
        now = time.monotonic()
        if self.register_future is not None:
            if now - self.register_sent > 3 * self.heartbeat:  # no answer: the cloud is gone or hung
                self.register_client.remove_pending_request(self.register_future)
                self.register_future = None
                self.set_registered(False)
        elif not self.register_client.service_is_ready():
            self.set_registered(False)
        elif not self.registered or now - self.register_sent > self.heartbeat:
            self.register_sent = now
            self.register_future = self.register_client.call_async(
                RegisterEdge.Request(edge_id=self.edge_id, profile=self.profile, current_version=self.version))
            self.register_future.add_done_callback(self.on_registered)
        self.flush()

    def set_registered(self, registered: bool) -> None:
        if self.registered and not registered:
            self.get_logger().warning("cloud unreachable: serving with the last good model, queueing uploads")
        self.registered = registered

    def on_registered(self, future) -> None:
        self.register_future = None
        response = future.result()
        if response is None or not response.accepted:
            self.get_logger().error(f"registration refused: {getattr(response, 'message', 'no response')}")
            return
        if not self.registered:
            self.get_logger().info(f"registered with the cloud: sub-model {response.submodel_spec}, "
                                   f"version {response.version}")
        self.set_registered(True)

    def _fps(self) -> float:
        if len(self.frame_times) < 2:
            return 0.0
        return (len(self.frame_times) - 1) / max(self.frame_times[-1] - self.frame_times[0], 1e-6)

    def on_status(self) -> None:
        c = self.counters
        ratio = c["uploaded"] / max(c["frames"], 1)
        status = EdgeStatus(edge_id=self.edge_id, model_version=self.version, submodel_spec=self.spec,
                            fps=self._fps(), upload_ratio=ratio, frames_seen=c["frames"],
                            frames_uploaded=c["uploaded"], updates_applied=c["applied"],
                            updates_rejected=c["rejected_updates"], upload_queue=len(self.queue),
                            latency_p50_ms=float(np.median(self.latencies)) if self.latencies else 0.0,
                            mean_entropy=float(np.mean(self.entropies)) if self.entropies else 0.0)
        status.header.stamp = self.get_clock().now().to_msg()
        status.profile = self.profile
        self.status_pub.publish(status)
        level = DiagnosticStatus.OK if self.registered else DiagnosticStatus.WARN
        self.diagnostics.publish(level, "registered" if self.registered else "cloud unreachable", {
            **c, "model_version": self.version, "upload_ratio": f"{ratio:.3f}", "fps": f"{self._fps():.1f}",
            "upload_queue": len(self.queue), "last_reject": self.last_reject})


def main() -> None:
    run_node(EdgeLearner)


if __name__ == "__main__":
    main()
