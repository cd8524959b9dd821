"""bandwidth_monitor: measures the edge-cloud link and publishes `bandwidth` (BandwidthEstimate).

Active: round trips of the cloud's `bandwidth_probe` service with payloads both ways (throughput). Passive:
the bytes of this edge's uploads and updates actually seen on the eclm topics: its own update topic, and the
shared upload topic through a DDS content filter on its edge id (rclpy from Kilted on), so in a fleet no
robot's monitor is sent the other robots' uploads (before Kilted they arrive and are counted as foreign). A
probe that does not return within `probe_timeout_s` counts as lost; when the recent ones all fail the link is
reported down.
"""
import time

from rclpy.node import Node

from ...core.bandwidth import LinkEstimator, upload_budget_bps
from ...core.health import ERROR, OK, Health
from ...msg import BandwidthEstimate, ModelUpdate, SampleBatch
from ...srv import BandwidthProbe
from ..links import edge_id_for, updates_topic
from ..params import BANDWIDTH_MONITOR, NodeParameters
from ..ros_io import RELIABLE_QOS, UPDATE_QOS, Diagnostics, period_s, run_node, set_period

try:  # rclpy's content-filtered subscriptions (Kilted and newer)
    from rclpy.subscription_content_filter_options import ContentFilterOptions
except ImportError:
    ContentFilterOptions = None


class BandwidthMonitor(Node):
    def __init__(self) -> None:
        super().__init__("bandwidth_monitor")
        p = self.params = NodeParameters(self, BANDWIDTH_MONITOR, self.on_parameter)
        self.edge_id = edge_id_for(self, p["edge_id"])
        cloud = p["cloud_namespace"].rstrip("/")
        self.estimator = LinkEstimator(p["window"])
        self.client = self.create_client(BandwidthProbe, f"{cloud}/bandwidth_probe")
        self.pub = self.create_publisher(BandwidthEstimate, "bandwidth", RELIABLE_QOS)
        self.cloud_pub = self.create_publisher(BandwidthEstimate, f"{cloud}/link_estimates", RELIABLE_QOS)
        own = {"content_filter_options": ContentFilterOptions("edge_id = %0", [f"'{self.edge_id}'"])} \
            if ContentFilterOptions else {}
        self.samples = self.create_subscription(SampleBatch, f"{cloud}/samples", self.on_samples, RELIABLE_QOS,
                                                **own)
        self.create_subscription(ModelUpdate, updates_topic(cloud, self.edge_id), self.on_update, UPDATE_QOS)
        self.diagnostics = Diagnostics(self, self.settings)
        self.payload = bytes(p["probe_bytes"])
        self.seq = 0
        self.outstanding: tuple[int, float, object] | None = None
        self.bytes_up = self.bytes_down = 0
        self.seen_up = 0  # this edge's upload bytes seen since start
        self.foreign = 0  # other robots' uploads that reached this monitor (none through a content filter)
        self.window_start = time.monotonic()
        self.timer = self.create_timer(p["probe_period_s"], self.on_timer)

    def on_parameter(self, name: str, value) -> None:
        if name == "probe_period_s":
            set_period(self.timer, value)
        elif name == "probe_bytes":
            self.payload = bytes(value)

    def settings(self) -> dict:
        """The probe period and payload as the timer and buffer hold them; the rest is read at each use."""
        return {"probe_period_s": period_s(self.timer), "probe_bytes": len(self.payload),
                **{k: self.params[k] for k in ("reply_bytes", "probe_timeout_s", "upload_share")}}

    def on_samples(self, msg: SampleBatch) -> None:
        if msg.edge_id == self.edge_id:
            size = sum(len(f.data) for f in msg.frames)
            self.bytes_up += size
            self.seen_up += size
        else:
            self.foreign += 1

    def on_update(self, msg: ModelUpdate) -> None:
        self.bytes_down += len(msg.bundle.payload)

    def on_response(self, future) -> None:
        if self.outstanding is None or future is not self.outstanding[2]:
            return  # answered after it was counted as lost
        _, sent, _ = self.outstanding
        self.outstanding = None
        response = future.result()
        if response is not None:
            self.estimator.add_probe(time.monotonic() - sent, response.received_bytes, len(response.payload))

    def on_timer(self) -> None:
        now = time.monotonic()
        if self.outstanding is not None and now - self.outstanding[1] > self.params["probe_timeout_s"]:
            self.estimator.add_probe(None)
            self.outstanding = None
        if self.outstanding is None:
            if self.client.service_is_ready():
                self.seq += 1
                req = BandwidthProbe.Request(edge_id=self.edge_id, seq=self.seq, reply_bytes=self.params["reply_bytes"],
                                             payload=self.payload)
                req.sent = self.get_clock().now().to_msg()
                future = self.client.call_async(req)
                self.outstanding = (self.seq, now, future)
                future.add_done_callback(self.on_response)
            else:
                self.estimator.add_probe(None)
        self.publish(now)

    def publish(self, now: float) -> None:
        est = self.estimator.estimate()
        elapsed = max(now - self.window_start, 1e-6)
        msg = BandwidthEstimate(edge_id=self.edge_id, uplink_bps=est.uplink_bps, downlink_bps=est.downlink_bps,
                                rtt_ms=est.rtt_ms, rtt_p95_ms=est.rtt_p95_ms, loss=est.loss, link_up=est.link_up,
                                observed_uplink_bps=8 * self.bytes_up / elapsed,
                                observed_downlink_bps=8 * self.bytes_down / elapsed,
                                upload_budget_bps=upload_budget_bps(est, self.params["upload_share"]))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub.publish(msg)
        self.cloud_pub.publish(msg)  # the cloud sizes its updates to this edge's downlink
        if elapsed > 10:
            self.bytes_up = self.bytes_down = 0
            self.window_start = now
        self.diagnostics.publish([Health("link", OK if est.link_up else ERROR, "link up" if est.link_up else "link down", {
            "uplink_bps": f"{est.uplink_bps:.0f}", "downlink_bps": f"{est.downlink_bps:.0f}",
            "rtt_ms": f"{est.rtt_ms:.1f}", "loss": f"{est.loss:.2f}", "seen_upload_bytes": self.seen_up,
            "uploads_filtered": bool(ContentFilterOptions and self.samples.is_cft_enabled),
            "foreign_uploads": self.foreign})])


def main() -> None:
    run_node(BandwidthMonitor)


if __name__ == "__main__":
    main()
