"""cloud_coordinator: registers edges, learns from their uploads, sends each its signed, versioned updates.

Services `register_edge`, `reassemble_submodel`; subscribes `samples`, `edge_status`, `learned_modules`,
`link_estimates`, `link_probes`; publishes `updates/<edge_id>` (reliable, transient-local) and answers each
registered edge's bandwidth probes on `link_probes/<edge_id>` (best effort). Everything
between those is the ROS-free ``Coordinator``, which learns on its own thread. A managed node: configure loads
the model, keys and saved state, activate serves and learns, deactivate stops both and saves (queued uploads
and every edge's state are kept for the next activation).
"""
from pathlib import Path

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

from ...core import checkpoint
from ...core.coordinator import Coordinator, CoordinatorConfig
from ...core.distill import DistillConfig
from ...core.messages import Registration
from ...core.model_import import InputSpec, load_model
from ...core.signing import KeyRing, cloud_keys
from ...core.strategies import make_strategy
from ...msg import BandwidthEstimate, EdgeStatus, LearnedModules, LinkProbe, SampleBatch
from ...srv import ReassembleSubmodel, RegisterEdge
from ..lifecycle import ManagedNode
from ..links import DdsCloudLink, EdgePublishers
from ..params import CLOUD_COORDINATOR, NodeParameters
from ..ros_io import (PROBE_QOS, RELIABLE_QOS, Diagnostics, core_logger, modules_from_msg, period_s, profile_from_msg,
                      run_node, samples_from_msg, set_period, status_from_msg)

RUNTIME_SETTINGS = ("update_encoding", "update_deadline_s", "max_chunk_bytes")
MAX_PROBE_REPLY = 16 * 1024 * 1024


class CloudCoordinator(ManagedNode):
    multi_threaded = True

    def __init__(self) -> None:
        super().__init__("cloud_coordinator")
        self.params = NodeParameters(self, CLOUD_COORDINATOR, self.on_parameter)
        self.coordinator: Coordinator | None = None
        self.timers_by_name: dict = {}

    def configure(self) -> None:
        p = self.params
        path = p["model_path"] or checkpoint.default_path("cloud")
        fix = "run 'eclm-ros train' (or set model_path to a trained checkpoint)"
        cloud = load_model(path, InputSpec(p["labels_path"]), fix=fix)
        student = load_model(p["edge_model_path"], InputSpec(p["labels_path"])) if p["edge_model_path"] else None
        private_key, edge_keys = cloud_keys(KeyRing.at(p["keys_dir"]), p["private_key"], p["edge_keys_dir"],
                                            p["insecure"])
        gaps = [gap for gap, key in (("updates are unsigned", private_key), ("any upload teaches the cloud",
                                                                            edge_keys)) if key is None]
        if gaps:
            self.get_logger().warning(f"insecure (lab mode): {', '.join(gaps)}")
        self.coordinator = Coordinator(
            make_strategy(p["strategy"], cloud, student, ray_workers=p["ray_workers"], ray_address=p["ray_address"],
                          config=DistillConfig(source_per_step=p["source_views"], source_steps=p["source_steps"])),
            DdsCloudLink(self),
            CoordinatorConfig(max_pending_batches=p["max_pending_batches"], **{k: p[k] for k in RUNTIME_SETTINGS}),
            private_key=private_key, edge_keys=edge_keys, state_dir=Path(p["state_dir"]) if p["state_dir"] else None,
            log=core_logger(self, "cloud"))
        self.diagnostics = Diagnostics(self, self.settings)
        self.get_logger().info(f"cloud coordinator: {self.coordinator.strategy.summary}; teacher {path}"
                               f"{', edge model ' + p['edge_model_path'] if student else ''}, "
                               f"{len(self.coordinator.versions)} edges restored")

    def activate(self) -> None:
        p, coordinator = self.params, self.coordinator
        # two groups: what needs the strategy (registrations, re-assembly, saves) waits for a learning step;
        # uploads, status, link estimates, merge requests and /diagnostics never do
        handlers, strategy = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        self.create_subscription(SampleBatch, "samples", self.on_samples, RELIABLE_QOS, callback_group=handlers)
        self.create_subscription(EdgeStatus, "edge_status", lambda msg: coordinator.on_status(
            status_from_msg(msg)), RELIABLE_QOS, callback_group=handlers)
        self.create_subscription(LearnedModules, "learned_modules", lambda msg: coordinator.on_modules(
            modules_from_msg(msg)), RELIABLE_QOS, callback_group=handlers)
        self.create_subscription(BandwidthEstimate, "link_estimates", lambda msg: coordinator.on_link(
            msg.edge_id, msg.downlink_bps, msg.link_up), RELIABLE_QOS, callback_group=handlers)
        self.create_service(RegisterEdge, "register_edge", self.on_register, callback_group=strategy)
        self.create_service(ReassembleSubmodel, "reassemble_submodel", self.on_reassemble, callback_group=strategy)
        self.probe_replies = EdgePublishers(self, "link_probes", LinkProbe, PROBE_QOS)
        self.create_subscription(LinkProbe, "link_probes", self.on_probe, PROBE_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())  # answered at once, never queued
        self.create_timer(1.0, lambda: self.diagnostics.publish(coordinator.health()), callback_group=handlers)
        self.timers_by_name = {
            "save_period_s": self.create_timer(p["save_period_s"], coordinator.save, callback_group=strategy),
            "merge_period_s": self.create_timer(p["merge_period_s"], coordinator.merge_round,
                                                callback_group=handlers)}
        coordinator.start()
        self.get_logger().info("cloud coordinator serving")

    def deactivate(self) -> None:
        self.timers_by_name = {}
        self.coordinator.close()  # stops learning and saves; start() resumes with the queue as it was

    def cleanup(self) -> None:
        if self.coordinator is not None:
            self.coordinator.strategy.close()  # its Ray workers, when it learns on them
        self.coordinator = None

    def on_parameter(self, name: str, value) -> None:
        """Into the coordinator or a timer; unconfigured or inactive, the value waits for the next transition."""
        if name in self.timers_by_name:
            set_period(self.timers_by_name[name], value)
        if self.coordinator is None:
            return
        if name in RUNTIME_SETTINGS:
            self.coordinator.configure(**{name: value})
        elif name == "max_pending_batches":
            self.coordinator.configure(max_pending_batches=value)

    def settings(self) -> dict:
        config = self.coordinator.config
        return {**{k: getattr(config, k) for k in (*RUNTIME_SETTINGS, "max_pending_batches")},
                **{k: period_s(timer) for k, timer in self.timers_by_name.items()}}

    def on_samples(self, msg: SampleBatch) -> None:
        try:
            batch = samples_from_msg(msg)
        except ValueError as exc:
            self.coordinator.refuse_samples(f"batch {msg.batch_seq} of {msg.edge_id!r}: {exc}")
            return
        self.coordinator.on_samples(batch)

    def on_register(self, request, response):
        reply = self.coordinator.register(Registration(request.edge_id, profile_from_msg(request.profile),
                                                       int(request.current_version)))
        response.accepted, response.message = reply.accepted, reply.message
        response.submodel_spec, response.version = reply.submodel_spec, reply.version
        return response

    def on_reassemble(self, request, response):
        """Re-derive an edge's sub-model for a new budget (or its current environment); the weights follow as
        an update, like a registration's."""
        reply = self.coordinator.reassemble(request.edge_id, profile_from_msg(request.profile),
                                            request.reason or "operator")
        response.accepted, response.message = reply.accepted, reply.message
        response.submodel_spec, response.version = reply.submodel_spec, reply.version
        return response

    def on_probe(self, msg: LinkProbe) -> None:
        """Answer a registered edge's probe on its own topic (an unknown id gets nothing, so a stranger cannot
        make the cloud send to arbitrary topics)."""
        if msg.edge_id not in self.coordinator.versions:
            return
        reply = LinkProbe(edge_id=msg.edge_id, seq=msg.seq, received_bytes=len(msg.payload),
                          payload=bytes(min(msg.reply_bytes, MAX_PROBE_REPLY)))
        reply.header.stamp = self.get_clock().now().to_msg()
        self.probe_replies[msg.edge_id].publish(reply)


def main() -> None:
    run_node(CloudCoordinator)


if __name__ == "__main__":
    main()
