"""cloud_coordinator: registers edges, learns from their uploads, sends each its signed, versioned updates.

Services `register_edge`, `bandwidth_probe`; subscribes `samples`, `edge_status`; publishes `model_updates`
(reliable, transient-local). Learning runs on a worker thread, so message handling never waits for it.
"""
import queue
import threading
import uuid

import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from eclm_ros.core.coordinator_state import CoordinatorState
from eclm_ros.core.selection import decode_frames
from eclm_ros.core.strategies import Profile, Update
from eclm_ros.core.tensor_codec import pack
from eclm_ros.core.updates import UpdateHeader, signature_for
from eclm_ros.msg import EdgeStatus, ModelUpdate, SampleBatch
from eclm_ros.ros_io import (RELIABLE_QOS, UPDATE_QOS, Diagnostics, NodeParameters, bundle_to_msg, run_node)
from eclm_ros.srv import BandwidthProbe, RegisterEdge


class CloudCoordinator(Node):
    multi_threaded = True

    def __init__(self) -> None:
        super().__init__("cloud_coordinator")
        p = NodeParameters(self)
        quick = p.declare("quick_models", False, "use the tiny --quick models (tests)")
        cache = p.declare("model_cache", "", "checkpoint cache directory ('' = $ECLM_ROS_CACHE or ~/.cache/eclm_ros)")
        state_dir = p.declare("state_dir", "", "where per-edge state is saved and restored ('' = not persisted)")
        key = p.declare("private_key", "", "PEM file of the Ed25519 key that signs updates ('' = unsigned)")
        self.encoding = p.declare("update_encoding", "fp16", "tensor encoding of affine updates",
                                  lambda v: v in ("raw", "fp16", "int8"), "raw, fp16 or int8")
        self.max_pending = p.declare("max_pending_batches", 64, "upload batches waiting for the learner before "
                                     "the oldest are dropped", lambda v: v >= 1, "must be >= 1")
        self.save_period = p.declare("save_period_s", 10.0, "seconds between state saves", lambda v: v > 0,
                                     "must be > 0")
        self.state = CoordinatorState(quick=quick, cache_dir=cache or None, state_dir=state_dir or None,
                                      private_key_path=key or None)
        self.counters = dict(batches=0, frames=0, rejected_batches=0, updates=0, dropped_batches=0, registrations=0)
        self.last_reject = ""
        self.work: queue.Queue = queue.Queue(maxsize=self.max_pending)
        self.update_pub = self.create_publisher(ModelUpdate, "model_updates", UPDATE_QOS)
        group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(SampleBatch, "samples", self.on_samples, RELIABLE_QOS, callback_group=group)
        self.create_subscription(EdgeStatus, "edge_status", self.on_status, RELIABLE_QOS, callback_group=group)
        self.create_service(RegisterEdge, "register_edge", self.on_register, callback_group=group)
        self.create_service(BandwidthProbe, "bandwidth_probe", self.on_probe,
                            callback_group=MutuallyExclusiveCallbackGroup())
        self.diagnostics = Diagnostics(self, "cloud coordinator")
        self.create_timer(1.0, self.on_diagnostics, callback_group=group)
        self.create_timer(self.save_period, self.state.save, callback_group=group)
        self.running = True
        self.worker = threading.Thread(target=self.learn, name="eclm-learner", daemon=True)
        self.worker.start()
        self.get_logger().info(f"cloud coordinator ready ({len(self.state.versions)} edges restored)")

    def publish_update(self, edge_id: str, update: Update, encoding: str = "raw") -> int:
        version = self.state.versions.get(edge_id, 0)
        new_version = version + 1
        bundle = pack(update.tensors, encoding=encoding)
        header = UpdateHeader(edge_id, uuid.uuid4().hex, new_version, 0 if update.kind == 2 else version,
                              update.kind, update.submodel_spec)
        msg = ModelUpdate(target_edge=edge_id, update_id=header.update_id, version=new_version,
                          base_version=header.base_version, kind=update.kind, submodel_spec=update.submodel_spec,
                          chunk_index=0, chunk_count=1)
        msg.header.stamp = self.get_clock().now().to_msg()
        bundle_to_msg(bundle, msg.bundle)
        if self.state.private_key is not None:
            msg.signature_scheme, msg.key_id, signature = signature_for(header, bundle, self.state.private_key)
            msg.signature = signature
        self.update_pub.publish(msg)
        self.state.versions[edge_id] = new_version
        self.counters["updates"] += 1
        return new_version

    def on_register(self, request, response):
        profile = Profile(trainable=request.profile.runtime == request.profile.RUNTIME_TRAINABLE,
                          max_params=request.profile.max_params, max_macs=request.profile.max_macs,
                          max_latency_ms=request.profile.max_latency_ms)
        try:
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

    def on_samples(self, msg: SampleBatch) -> None:
        if msg.edge_id not in self.state.versions:
            self.counters["rejected_batches"] += 1
            self.last_reject = f"samples from unregistered edge {msg.edge_id!r}"
            return
        try:
            frames = decode_frames([bytes(f.data) for f in msg.frames])
        except ValueError as exc:
            self.counters["rejected_batches"] += 1
            self.last_reject = f"batch {msg.batch_seq} of {msg.edge_id}: {exc}"
            self.get_logger().warning(self.last_reject)
            return
        if frames.shape[1:] != (28, 28):
            frames = np.stack([cv2.resize(f, (28, 28), interpolation=cv2.INTER_AREA) for f in frames])
        try:
            self.work.put_nowait((msg.edge_id, frames))
        except queue.Full:
            self.counters["dropped_batches"] += 1
            return
        self.counters["batches"] += 1
        self.counters["frames"] += len(frames)

    def learn(self) -> None:
        """Worker thread: distil on uploads and publish the resulting updates."""
        while self.running:
            try:
                edge_id, frames = self.work.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                update = self.state.strategy.on_samples(edge_id, frames)
                if update is not None:
                    self.publish_update(edge_id, update, self.encoding)
            except Exception as exc:  # a learning failure must not kill the coordinator
                self.last_reject = f"learning on {edge_id}: {exc}"
                self.get_logger().error(self.last_reject)

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
            **self.counters, "queue": self.work.qsize(), "last_reject": self.last_reject,
            **{f"version/{e}": v for e, v in self.state.versions.items()}})

    def close(self) -> None:
        self.running = False
        self.worker.join(timeout=5)
        self.state.save()


def main() -> None:
    run_node(CloudCoordinator)


if __name__ == "__main__":
    main()
