"""cloud_coordinator: registers edges, learns from their uploads, sends each its signed, versioned updates.

Services `register_edge`, `reassemble_submodel`, `bandwidth_probe`; subscribes `samples`, `edge_status`;
publishes `model_updates` (reliable, transient-local). Learning (distil, compose, merge rounds) runs on a worker
thread, so message handling never waits for it.
"""
import math
import queue
import threading
import uuid

import cv2
import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.node import Node

from eclm_ros.core.bandwidth import ENCODING_ORDER, link_encoding
from eclm_ros.core.chunking import split
from eclm_ros.core.coordinator_state import CoordinatorState
from eclm_ros.core.selection import decode_frames
from eclm_ros.core.signing import EdgeKeys, SignatureError, upload_bytes
from eclm_ros.core.strategies import STRATEGIES, Update
from eclm_ros.core.tensor_codec import CodecError, pack, unpack
from eclm_ros.core.updates import KIND_FULL, UpdateHeader, signature_for
from eclm_ros.msg import BandwidthEstimate, EdgeStatus, LearnedModules, ModelUpdate, SampleBatch
from eclm_ros.ros_io import (RELIABLE_QOS, UPDATE_QOS, Diagnostics, NodeParameters, bundle_signed_parts,
                            bundle_to_msg, msg_to_bundle, profile_from_msg, run_node)
from eclm_ros.srv import BandwidthProbe, ReassembleSubmodel, RegisterEdge


class CloudCoordinator(Node):
    multi_threaded = True

    def __init__(self) -> None:
        super().__init__("cloud_coordinator")
        p = NodeParameters(self)
        quick = p.declare("quick_models", False, "use the tiny --quick models (tests)")
        cache = p.declare("model_cache", "", "checkpoint cache directory ('' = $ECLM_ROS_CACHE or ~/.cache/eclm_ros)")
        state_dir = p.declare("state_dir", "", "where per-edge state is saved and restored ('' = not persisted)")
        key = p.declare("private_key", "", "PEM file of the Ed25519 key that signs updates ('' = unsigned)")
        edge_keys = p.declare("edge_keys_dir", "", "directory of enrolled edges' public keys (<edge_id>.pem); when "
                              "set, only uploads and modules their edge signed are learned from ('' = any)")
        self.edge_keys = EdgeKeys(edge_keys) if edge_keys else None
        self.encoding = p.declare("update_encoding", "fp16", "tensor encoding of affine updates",
                                  lambda v: v in ENCODING_ORDER, "raw, fp16 or int8")
        self.max_pending = p.declare("max_pending_batches", 64, "upload batches waiting for the learner before "
                                     "the oldest are dropped", lambda v: v >= 1, "must be >= 1")
        self.save_period = p.declare("save_period_s", 10.0, "seconds between state saves", lambda v: v > 0,
                                     "must be > 0")
        self.max_chunk_bytes = p.declare("max_chunk_bytes", 16 * 1024 * 1024, "updates whose payload is larger "
                                         "travel in chunks of at most this many bytes", lambda v: v > 0, "must be > 0")
        strategy = p.declare("strategy", "eclm_ros", "distil (CEMA), compose (+ECLM re-composition and module "
                             "integration) or eclm_ros (+ECAvg merge rounds across edges)",
                             lambda v: v in STRATEGIES, f"one of {', '.join(STRATEGIES)}", read_only=True)
        self.update_deadline = p.declare("update_deadline_s", 1.0, "an update must reach its edge within this "
                                         "time on the measured downlink; a smaller encoding is used when it would "
                                         "not", lambda v: v > 0, "must be > 0")
        self.encodings = dict.fromkeys(ENCODING_ORDER, 0)
        merge_period = p.declare("merge_period_s", 30.0, "seconds between merge rounds across edges",
                                 lambda v: v > 0, "must be > 0")
        self.state = CoordinatorState(quick=quick, cache_dir=cache or None, state_dir=state_dir or None,
                                      private_key_path=key or None, strategy=strategy)
        self.counters = dict(batches=0, frames=0, rejected_batches=0, updates=0, dropped_batches=0, registrations=0,
                             recompositions=0, merges_accepted=0, merges_refused=0, modules_integrated=0,
                             rejected_modules=0)
        self.last_reject = ""
        self.work: queue.Queue = queue.Queue(maxsize=self.max_pending)
        self.update_pub = self.create_publisher(ModelUpdate, "model_updates", UPDATE_QOS)
        group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(SampleBatch, "samples", self.on_samples, RELIABLE_QOS, callback_group=group)
        self.create_subscription(EdgeStatus, "edge_status", self.on_status, RELIABLE_QOS, callback_group=group)
        self.create_subscription(LearnedModules, "learned_modules", self.on_modules, RELIABLE_QOS,
                                 callback_group=group)
        self.create_subscription(BandwidthEstimate, "link_estimates", self.on_link, RELIABLE_QOS,
                                 callback_group=group)
        self.downlinks: dict[str, float] = {}  # edge -> measured downlink bit/s (bandwidth monitors)
        self.create_service(RegisterEdge, "register_edge", self.on_register, callback_group=group)
        self.create_service(ReassembleSubmodel, "reassemble_submodel", self.on_reassemble, callback_group=group)
        self.create_service(BandwidthProbe, "bandwidth_probe", self.on_probe,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.diagnostics = Diagnostics(self, "cloud coordinator")
        self.create_timer(1.0, self.on_diagnostics, callback_group=group)
        self.create_timer(self.save_period, self.state.save, callback_group=group)
        self.create_timer(merge_period, lambda: self._submit(("merge", None, None)), callback_group=group)
        self.running = True
        self.worker = threading.Thread(target=self.learn, name="eclm-learner", daemon=True)
        self.worker.start()
        self.get_logger().info(f"cloud coordinator ready ({len(self.state.versions)} edges restored)")

    def publish_update(self, edge_id: str, update: Update, encoding: str = "raw") -> int:
        version = self.state.versions.get(edge_id, 0)
        new_version = version + 1
        payload = sum(int(t.numel()) * t.element_size() for t in update.tensors.values())
        encoding = link_encoding(encoding, payload, self.downlinks.get(edge_id, 0.0), self.update_deadline)
        self.encodings[encoding] += 1
        bundle = pack(update.tensors, encoding=encoding)
        header = UpdateHeader(edge_id, uuid.uuid4().hex, new_version, 0 if update.kind == KIND_FULL else version,
                              update.kind, update.submodel_spec)
        msg = ModelUpdate(target_edge=edge_id, update_id=header.update_id, version=new_version,
                          base_version=header.base_version, kind=update.kind, submodel_spec=update.submodel_spec,
                          chunk_index=0, chunk_count=1)
        msg.header.stamp = self.get_clock().now().to_msg()
        bundle_to_msg(bundle, msg.bundle)
        if self.state.private_key is not None:
            msg.signature_scheme, msg.key_id, signature = signature_for(header, bundle, self.state.private_key)
            msg.signature = signature
        chunks = split(bundle.payload, self.max_chunk_bytes)
        msg.chunk_count = len(chunks)
        for i, chunk in enumerate(chunks):
            if i and i % UPDATE_QOS.depth == 0:  # a keep-last history would drop chunks not yet acknowledged
                self.update_pub.wait_for_all_acked(Duration(seconds=5.0))
            msg.chunk_index, msg.bundle.payload = i, chunk
            self.update_pub.publish(msg)
        self.state.versions[edge_id] = new_version
        self.counters["updates"] += 1
        return new_version

    def on_register(self, request, response):
        with self.state.lock:
            try:
                profile = profile_from_msg(request.profile)
                update = self.state.register(request.edge_id, profile, request.current_version)
            except ValueError as exc:
                response.accepted, response.message = False, str(exc)
                self.get_logger().warning(f"refused registration of {request.edge_id!r}: {exc}")
                return response
            response.accepted = True
            if update is None:
                response.version, response.message = request.current_version, "in sync"
                response.submodel_spec = self.state.strategy.sessions[request.edge_id].spec_json
                return response
            response.version = self.publish_update(request.edge_id, update)
        response.submodel_spec, response.message = update.submodel_spec, "registered"
        self.counters["registrations"] += 1
        self.get_logger().info(f"edge {request.edge_id} registered, sent version {response.version}")
        return response

    def on_reassemble(self, request, response):
        """Re-derive an edge's sub-model for a new budget (or its current environment); the weights follow as
        a ModelUpdate, like a registration's."""
        if request.edge_id not in self.state.versions:
            response.accepted, response.message = False, f"edge {request.edge_id!r} has not registered"
            return response
        try:
            with self.state.lock:
                update = self.state.strategy.reassemble(request.edge_id, profile_from_msg(request.profile),
                                                        request.reason or "operator")
                response.version = self.publish_update(request.edge_id, update)
        except ValueError as exc:  # BudgetError: nothing fits the new budget
            response.accepted, response.message = False, str(exc)
            self.get_logger().warning(f"refused re-assembly for {request.edge_id!r}: {exc}")
            return response
        response.accepted, response.message, response.submodel_spec = True, update.reason, update.submodel_spec
        self.get_logger().info(f"re-assembled {request.edge_id}: {update.reason}, version {response.version}")
        return response

    def _submit(self, job: tuple) -> bool:
        try:
            self.work.put_nowait(job)
            return True
        except queue.Full:
            self.counters["dropped_batches"] += job[0] == "samples"
            return False

    def _check_signature(self, kind: str, msg, fields: list, payloads: list[bytes]) -> None:
        """Raise SignatureError unless the upload carries its edge's signature (when edge keys are set)."""
        if self.edge_keys is not None:
            self.edge_keys.check(msg.edge_id, upload_bytes(kind, msg.edge_id, fields, payloads),
                                 msg.signature_scheme, bytes(msg.signature))

    def on_samples(self, msg: SampleBatch) -> None:
        if msg.edge_id not in self.state.versions:
            self.counters["rejected_batches"] += 1
            self.last_reject = f"samples from unregistered edge {msg.edge_id!r}"
            return
        try:
            blobs = [bytes(f.data) for f in msg.frames]
            self._check_signature("samples", msg, [msg.batch_seq, msg.model_version, msg.encoding], blobs)
            frames = decode_frames(blobs)
        except (ValueError, SignatureError) as exc:
            self.counters["rejected_batches"] += 1
            self.last_reject = f"batch {msg.batch_seq} of {msg.edge_id}: {exc}"
            self.get_logger().warning(self.last_reject)
            return
        if frames.shape[1:] != (28, 28):
            frames = np.stack([cv2.resize(f, (28, 28), interpolation=cv2.INTER_AREA) for f in frames])
        if not self._submit(("samples", msg.edge_id, frames)):
            return
        self.counters["batches"] += 1
        self.counters["frames"] += len(frames)

    def on_modules(self, msg: LearnedModules) -> None:
        """A trainable edge's adapted modules: decoded strictly here, integrated on the learning thread."""
        try:
            if msg.edge_id not in self.state.versions:
                raise ValueError(f"modules from unregistered edge {msg.edge_id!r}")
            self._check_signature("modules", msg, [msg.base_version, msg.submodel_spec, msg.frames],
                                  bundle_signed_parts(msg.bundle))
            tensors = {k: torch.from_numpy(v) for k, v in unpack(msg_to_bundle(msg.bundle)).items()}
        except (ValueError, CodecError) as exc:
            self.counters["rejected_modules"] += 1
            self.last_reject = f"modules: {exc}"
            self.get_logger().warning(self.last_reject)
            return
        self._submit(("modules", msg.edge_id, (msg.submodel_spec, tensors, int(msg.frames))))

    def learn(self) -> None:
        """Worker thread: distil / re-compose on uploads, run merge rounds, publish the resulting updates."""
        while self.running:
            try:
                job, edge_id, frames = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                with self.state.lock:
                    if job == "samples":
                        self._send(edge_id, self.state.strategy.on_samples(edge_id, frames))
                    elif job == "modules":
                        self._send(edge_id, self.state.strategy.on_modules(edge_id, *frames))
                        self.counters["modules_integrated"] += 1
                    else:
                        self._merge_round()
            except Exception as exc:  # a learning failure must not kill the coordinator
                self.counters["rejected_modules"] += job == "modules"
                self.last_reject = f"{job} for {edge_id}: {exc}"
                self.get_logger().error(self.last_reject)

    def _send(self, edge_id: str, update: Update | None) -> None:
        if update is None:
            return
        version = self.publish_update(edge_id, update, self.encoding)
        if update.reason:
            self.counters["recompositions"] += update.reason.startswith("recomposed")
            self.get_logger().info(f"{edge_id}: {update.reason} (version {version})")

    def _merge_round(self) -> None:
        updates, decisions = self.state.strategy.aggregate()
        for decision in decisions:
            accepted = "accepted" in decision
            self.counters["merges_accepted" if accepted else "merges_refused"] += 1
            (self.get_logger().info if accepted else self.get_logger().warning)(decision)
        for edge_id, update in updates.items():
            self._send(edge_id, update)

    def on_link(self, msg: BandwidthEstimate) -> None:
        if not math.isfinite(msg.downlink_bps) or msg.downlink_bps < 0:  # keep the last good estimate
            self.last_reject = f"link estimate for {msg.edge_id!r}: downlink {msg.downlink_bps} bit/s"
            self.get_logger().warning(f"ignored {self.last_reject}", throttle_duration_sec=10.0)
            return
        self.downlinks[msg.edge_id] = msg.downlink_bps if msg.link_up else 0.0

    def on_status(self, msg: EdgeStatus) -> None:
        self.state.last_status[msg.edge_id] = {"version": msg.model_version, "fps": msg.fps,
                                               "upload_ratio": msg.upload_ratio}

    def on_probe(self, request, response):
        response.seq = request.seq
        response.received_bytes = len(request.payload)
        response.payload = bytes(min(request.reply_bytes, 16 * 1024 * 1024))
        return response

    def on_diagnostics(self) -> None:
        self.diagnostics.publish(DiagnosticStatus.OK, f"{len(self.state.versions)} edges", {
            **self.counters, **{f"updates_{k}": v for k, v in self.encodings.items()}, "queue": self.work.qsize(),
            "last_reject": self.last_reject,
            **{f"version/{e}": v for e, v in self.state.versions.items()}})

    def close(self) -> None:
        self.running = False
        self.worker.join(timeout=5)
        self.state.save()


def main() -> None:
    run_node(CloudCoordinator)


if __name__ == "__main__":
    main()
