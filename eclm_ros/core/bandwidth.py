"""Link estimates from measurements, and the budgets that follow from them.

The bandwidth monitor feeds probe results (round trip, bytes each way) and passive byte counts; the estimate
is robust (medians over a window), and a link whose recent probes all failed is reported down. Edges keep
their uploads under a share of the measured uplink; the cloud picks the update encoding the downlink affords.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinkEstimate:
    uplink_bps: float
    downlink_bps: float
    rtt_ms: float
    rtt_p95_ms: float
    loss: float
    link_up: bool


class LinkEstimator:
    """A sliding window of probe results (None = the probe timed out)."""

    def __init__(self, window: int = 20) -> None:
        self.probes: deque[tuple[float, int, int] | None] = deque(maxlen=window)

    def add_probe(self, rtt_s: float | None, up_bytes: int = 0, down_bytes: int = 0) -> None:
        if rtt_s is not None and (not np.isfinite(rtt_s) or rtt_s < 0):
            raise ValueError(f"probe round trip must be a non-negative time, got {rtt_s}")
        self.probes.append(None if rtt_s is None else (float(rtt_s), int(up_bytes), int(down_bytes)))

    def estimate(self) -> LinkEstimate:
        ok = [p for p in self.probes if p is not None]
        loss = 1.0 - len(ok) / len(self.probes) if self.probes else 1.0
        recent = list(self.probes)[-3:]
        link_up = bool(ok) and any(p is not None for p in recent)
        if not ok:
            return LinkEstimate(0.0, 0.0, float("inf"), float("inf"), loss, False)
        rtts = np.array([p[0] for p in ok])
        # throughput of a probe: its payload over its round trip (both directions share the RTT)
        up = [8 * p[1] / max(p[0], 1e-6) for p in ok if p[1]]
        down = [8 * p[2] / max(p[0], 1e-6) for p in ok if p[2]]
        return LinkEstimate(float(np.median(up)) if up else 0.0, float(np.median(down)) if down else 0.0,
                            float(np.median(rtts) * 1000), float(np.percentile(rtts, 95) * 1000), loss, link_up)


def upload_budget_bps(estimate: LinkEstimate, share: float = 0.5, floor_bps: float = 0.0) -> float:
    """Bits per second the edge's sample uploads may use: a share of the measured uplink (0 when down)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not estimate.link_up:
        return 0.0
    return max(estimate.uplink_bps * share * (1.0 - estimate.loss), floor_bps)


def choose_encoding(payload_bytes: int, downlink_bps: float, deadline_s: float = 1.0) -> str:
    """The tensor encoding whose size reaches the edge within ``deadline_s``: raw, then fp16, then int8."""
    for encoding, factor in (("raw", 1.0), ("fp16", 0.5), ("int8", 0.25)):
        if downlink_bps <= 0 or payload_bytes * factor * 8 / downlink_bps <= deadline_s:
            return encoding
    return "int8"


ENCODING_ORDER = ("raw", "fp16", "int8")  # from exact to smallest


def link_encoding(configured: str, payload_bytes: int, downlink_bps: float, deadline_s: float = 1.0) -> str:
    """The update encoding for an edge: the configured one, or a smaller one when the measured downlink could
    not carry the update within ``deadline_s`` (an unmeasured link, 0 bit/s, keeps the configured one)."""
    if not np.isfinite(downlink_bps):
        raise ValueError(f"downlink must be a finite bit rate, got {downlink_bps}")
    if configured not in ENCODING_ORDER:
        raise ValueError(f"unknown encoding {configured!r}; known: {', '.join(ENCODING_ORDER)}")
    needed = choose_encoding(payload_bytes, downlink_bps, deadline_s)
    return max(configured, needed, key=ENCODING_ORDER.index)
