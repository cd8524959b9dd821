"""The edge agent's and the cloud coordinator's links over DDS: the ``transport`` interfaces as ROS topics and
services. Each edge receives its updates on its own topic (``<cloud>/updates/<edge_id>``), so no robot is sent
another robot's weights."""
from __future__ import annotations

import re
import time
from typing import Callable

from rclpy.duration import Duration

from ..core import messages as m
from ..msg import EdgeStatus, LearnedModules, ModelUpdate, SampleBatch
from ..srv import RegisterEdge
from .ros_io import (RELIABLE_QOS, UPDATE_QOS, modules_to_msg, profile_to_msg, samples_to_msg, status_to_msg,
                     update_to_msg)

EDGE_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
MATCH_WAIT_S = 2.0  # a fresh update topic waits this long for the edge's subscription to be discovered


def edge_id_for(node, configured: str) -> str:
    """The edge id of an edge-side node (see ``edge_id_from``)."""
    return edge_id_from(node.get_namespace(), configured)


def edge_id_from(namespace: str, configured: str = "") -> str:
    """The configured edge id, or the namespace as one ("/robot1" -> "robot1", "/fleet/r2" -> "fleet_r2");
    ValueError when it cannot name a topic."""
    edge_id = configured or namespace.strip("/").replace("/", "_")
    if not EDGE_ID.match(edge_id):
        raise ValueError(f"edge_id {edge_id!r} refused: set edge_id or a namespace; it names a topic, so letters, "
                         f"digits and _ only, starting with a letter")
    return edge_id


def edge_topic(name: str, cloud_namespace: str, edge_id: str) -> str:
    """One edge's own topic ``<cloud>/<name>/<edge_id>``; relative to the node's own namespace when
    ``cloud_namespace`` is '' (the cloud)."""
    ns = cloud_namespace.rstrip("/")
    return f"{ns}/{name}/{edge_id}" if ns else f"{name}/{edge_id}"


def updates_topic(cloud_namespace: str, edge_id: str) -> str:
    """An edge's update topic (see ``edge_topic``)."""
    return edge_topic("updates", cloud_namespace, edge_id)


class EdgePublishers:
    """The cloud's publishers on each edge's own topic ``<name>/<edge_id>``, made at the first message for it; a
    fresh one waits up to ``match_wait_s`` for the edge's subscription to be discovered."""

    def __init__(self, node, name: str, msg_type, qos, match_wait_s: float = 0.0) -> None:
        self.node, self.name, self.msg_type, self.qos = node, name, msg_type, qos
        self.match_wait_s = match_wait_s
        self.publishers: dict[str, object] = {}

    def __getitem__(self, edge_id: str):
        pub = self.publishers.get(edge_id)
        if pub is None:
            pub = self.publishers[edge_id] = self.node.create_publisher(
                self.msg_type, edge_topic(self.name, "", edge_id), self.qos)
            deadline = time.monotonic() + self.match_wait_s
            while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
        return pub


class DdsEdgeLink:
    """An edge's link: uploads, status and modules on the cloud's topics, registration as a service call."""

    def __init__(self, node, cloud_namespace: str) -> None:
        self.node = node
        ns = cloud_namespace.rstrip("/")
        self.samples = node.create_publisher(SampleBatch, f"{ns}/samples", RELIABLE_QOS)
        self.status = node.create_publisher(EdgeStatus, f"{ns}/edge_status", RELIABLE_QOS)
        self.modules = node.create_publisher(LearnedModules, f"{ns}/learned_modules", RELIABLE_QOS)
        self.client = node.create_client(RegisterEdge, f"{ns}/register_edge")
        self._pending = None

    def _now(self):
        return self.node.get_clock().now().to_msg()

    def cloud_ready(self) -> bool:
        return self.client.service_is_ready()

    def register(self, request: m.Registration, done: Callable[[m.RegistrationReply], None]) -> None:
        if self._pending is not None and not self._pending.done():  # given up by the agent: forget it
            self.client.remove_pending_request(self._pending)
        self._pending = future = self.client.call_async(RegisterEdge.Request(
            edge_id=request.edge_id, profile=profile_to_msg(request.profile), current_version=request.current_version))

        def answered(f) -> None:
            reply = f.result()
            if reply is not None:
                done(m.RegistrationReply(reply.accepted, reply.message, reply.submodel_spec, int(reply.version)))
        future.add_done_callback(answered)

    def send_samples(self, batch: m.SampleBatch) -> None:
        self.samples.publish(samples_to_msg(batch, self._now()))

    def send_modules(self, modules: m.LearnedModules) -> None:
        self.modules.publish(modules_to_msg(modules, self._now()))

    def send_status(self, status: m.EdgeStatus) -> None:
        self.status.publish(status_to_msg(status, self._now()))


class DdsCloudLink:
    """The cloud's link: one reliable, transient-local update topic per edge (a late-joining edge still gets
    its newest updates), chunks paced so a keep-last history never drops one that is not yet acknowledged."""

    def __init__(self, node) -> None:
        self.node = node
        # chunks published before discovery matched the edge would reach it only through the transient-local history,
        # which keeps the last few: the edge would drop a whole chunked update and wait for the next
        self.publishers = EdgePublishers(node, "updates", ModelUpdate, UPDATE_QOS, MATCH_WAIT_S)

    def send_update(self, edge_id: str, parts: list[m.ModelUpdate]) -> None:
        pub = self.publishers[edge_id]
        stamp = self.node.get_clock().now().to_msg()
        for i, part in enumerate(parts):
            if i and i % UPDATE_QOS.depth == 0:
                pub.wait_for_all_acked(Duration(seconds=5.0))
            pub.publish(update_to_msg(part, stamp))
