"""bandwidth_monitor: measures the edge-cloud link and publishes `bandwidth` (BandwidthEstimate).

Active: round trips of the cloud's `bandwidth_probe` service with payloads both ways (throughput). Passive:
the bytes of this edge's uploads and updates actually seen on the eclm topics. A probe that does not return
within `probe_timeout_s` counts as lost; when the recent ones all fail the link is reported down.
"""
import time

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node

from eclm_ros.core.bandwidth import LinkEstimator, upload_budget_bps
from eclm_ros.msg import BandwidthEstimate, ModelUpdate, SampleBatch
from eclm_ros.ros_io import RELIABLE_QOS, UPDATE_QOS, Diagnostics, NodeParameters, run_node
from eclm_ros.srv import BandwidthProbe


class BandwidthMonitor(Node):
    def __init__(self) -> None:
        super().__init__("bandwidth_monitor")
        p = NodeParameters(self)
        self.edge_id = p.declare("edge_id", "robot1", "the edge end of the measured link", bool, "not empty")
        period = p.declare("probe_period_s", 1.0, "seconds between probes", lambda v: 0.05 <= v <= 60, "0.05..60")
        self.probe_bytes = p.declare("probe_bytes", 32768, "uplink payload per probe", lambda v: 0 <= v <= 16 << 20,
                                     "0..16 MiB")
        self.reply_bytes = p.declare("reply_bytes", 32768, "downlink payload per probe",
                                     lambda v: 0 <= v <= 16 << 20, "0..16 MiB")
        self.timeout = p.declare("probe_timeout_s", 2.0, "a probe slower than this is lost", lambda v: v > 0, "> 0")
        self.share = p.declare("upload_share", 0.5, "share of the measured uplink the edge's uploads may use",
                               lambda v: 0 < v <= 1, "in (0, 1]")
        window = p.declare("window", 20, "probes in the estimate", lambda v: v >= 1, ">= 1")
        cloud = p.declare("cloud_namespace", "/eclm", "namespace of the cloud coordinator")
        self.estimator = LinkEstimator(window)
        self.client = self.create_client(BandwidthProbe, f"{cloud}/bandwidth_probe")
        self.pub = self.create_publisher(BandwidthEstimate, "bandwidth", RELIABLE_QOS)
        self.cloud_pub = self.create_publisher(BandwidthEstimate, f"{cloud}/link_estimates", RELIABLE_QOS)
        self.create_subscription(SampleBatch, f"{cloud}/samples", self.on_samples, RELIABLE_QOS)
        self.create_subscription(ModelUpdate, f"{cloud}/model_updates", self.on_update, UPDATE_QOS)
        self.diagnostics = Diagnostics(self, "link")
        self.payload = bytes(self.probe_bytes)
        self.seq = 0
        self.outstanding: tuple[int, float, object] | None = None
        self.bytes_up = self.bytes_down = 0
        self.window_start = time.monotonic()
        self.create_timer(period, self.on_timer)

    def on_samples(self, msg: SampleBatch) -> None:
        if msg.edge_id == self.edge_id:
            self.bytes_up += sum(len(f.data) for f in msg.frames)

    def on_update(self, msg: ModelUpdate) -> None:
        if msg.target_edge in (self.edge_id, "*"):
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
        if self.outstanding is not None and now - self.outstanding[1] > self.timeout:
            self.estimator.add_probe(None)
            self.outstanding = None
        if self.outstanding is None:
            if self.client.service_is_ready():
                self.seq += 1
                req = BandwidthProbe.Request(edge_id=self.edge_id, seq=self.seq, reply_bytes=self.reply_bytes,
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
                                upload_budget_bps=upload_budget_bps(est, self.share))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub.publish(msg)
        self.cloud_pub.publish(msg)  # the cloud sizes its updates to this edge's downlink
        if elapsed > 10:
            self.bytes_up = self.bytes_down = 0
            self.window_start = now
        level = DiagnosticStatus.OK if est.link_up else DiagnosticStatus.ERROR
        self.diagnostics.publish(level, "link up" if est.link_up else "link down", {
            "uplink_bps": f"{est.uplink_bps:.0f}", "downlink_bps": f"{est.downlink_bps:.0f}",
            "rtt_ms": f"{est.rtt_ms:.1f}", "loss": f"{est.loss:.2f}"})


def main() -> None:
    run_node(BandwidthMonitor)


if __name__ == "__main__":
    main()
