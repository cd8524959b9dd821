"""bandwidth_monitor: measures the edge-cloud link and publishes `bandwidth` (BandwidthEstimate).

Sends the ``LinkProber``'s best-effort probes on `<cloud_namespace>/link_probes` and times the cloud's answers
on `<cloud_namespace>/link_probes/<edge_id>`; publishes the estimate every `probe_period_s` here and on
`<cloud_namespace>/link_estimates` (the cloud sizes this edge's updates to it). It subscribes to none of the
system's data topics: a second reader of the edge's updates would double what they cost the link.
"""
from rclpy.node import Node

from ...core.bandwidth import LinkProber, upload_budget_bps
from ...core.health import ERROR, OK, Health
from ...msg import BandwidthEstimate, LinkProbe
from ..links import edge_id_for, edge_topic
from ..params import BANDWIDTH_MONITOR, NodeParameters
from ..ros_io import PROBE_QOS, RELIABLE_QOS, Diagnostics, period_s, run_node, set_period

POLL_S = 0.02  # how often a due probe cycle or a lost probe is noticed (answers are handled at once)
PROBER_SETTINGS = {"probe_bytes": "max_up_bytes", "reply_bytes": "max_down_bytes", "probe_time_s": "probe_time_s",
                   "probe_period_s": "period_s", "probe_timeout_s": "timeout_s"}


class BandwidthMonitor(Node):
    def __init__(self) -> None:
        super().__init__("bandwidth_monitor")
        p = self.params = NodeParameters(self, BANDWIDTH_MONITOR, self.on_parameter)
        self.edge_id = edge_id_for(self, p["edge_id"])
        cloud = p["cloud_namespace"].rstrip("/")
        self.prober = LinkProber(window=p["window"], **{k: p[name] for name, k in PROBER_SETTINGS.items()})
        self.probes = self.create_publisher(LinkProbe, f"{cloud}/link_probes", PROBE_QOS)
        self.create_subscription(LinkProbe, edge_topic("link_probes", cloud, self.edge_id), self.on_answer, PROBE_QOS)
        self.pub = self.create_publisher(BandwidthEstimate, "bandwidth", RELIABLE_QOS)
        self.cloud_pub = self.create_publisher(BandwidthEstimate, f"{cloud}/link_estimates", RELIABLE_QOS)
        self.diagnostics = Diagnostics(self, self.settings)
        self.create_timer(POLL_S, self.send_due)
        self.timer = self.create_timer(p["probe_period_s"], self.publish)

    def on_parameter(self, name: str, value) -> None:
        if name in PROBER_SETTINGS:
            self.prober.configure(**{PROBER_SETTINGS[name]: value})
        if name == "probe_period_s":
            set_period(self.timer, value)

    def settings(self) -> dict:
        """The prober's settings as it holds them, the publishing period as the timer has it."""
        d, prober = self.prober.directions, self.prober
        return {"probe_period_s": period_s(self.timer), "probe_bytes": d["up"].max_bytes,
                "reply_bytes": d["down"].max_bytes, "probe_time_s": prober.probe_time_s,
                "probe_timeout_s": prober.timeout_s, "upload_share": self.params["upload_share"]}

    def send_due(self) -> None:
        probe = self.prober.poll()
        if probe is not None:
            msg = LinkProbe(edge_id=self.edge_id, seq=probe.seq, reply_bytes=probe.down_bytes,
                            payload=bytes(probe.up_bytes))
            msg.header.stamp = self.get_clock().now().to_msg()
            self.probes.publish(msg)

    def on_answer(self, msg: LinkProbe) -> None:
        self.prober.on_reply(msg.seq, msg.received_bytes, len(msg.payload))
        self.send_due()  # the cycle's next probe leaves at once

    def publish(self) -> None:
        est = self.prober.estimate()
        msg = BandwidthEstimate(edge_id=self.edge_id, uplink_bps=est.uplink_bps, downlink_bps=est.downlink_bps,
                                rtt_ms=est.rtt_ms, rtt_p95_ms=est.rtt_p95_ms, loss=est.loss, link_up=est.link_up,
                                upload_budget_bps=upload_budget_bps(est, self.params["upload_share"]))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub.publish(msg)
        self.cloud_pub.publish(msg)  # the cloud sizes its updates to this edge's downlink
        sizes = {f"probe_bytes_{k}": d.size for k, d in self.prober.directions.items()}
        level, text = (OK, "link up") if est.link_up else (ERROR, "link down")
        self.diagnostics.publish([Health("link", level, text, {
            "uplink_bps": f"{est.uplink_bps:.0f}", "downlink_bps": f"{est.downlink_bps:.0f}",
            "rtt_ms": f"{est.rtt_ms:.1f}", "loss": f"{est.loss:.2f}", **sizes})])


def main() -> None:
    run_node(BandwidthMonitor)


if __name__ == "__main__":
    main()
