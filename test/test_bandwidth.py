"""Link estimates from probes, and the budgets and encodings that follow from them. The prober runs against a
model of a shaped link (token bucket with a burst and a queue, fixed latency, noise) on a simulated clock; the
real one is test_links.py."""
import math
from dataclasses import replace

import numpy as np
import pytest

from eclm_ros.core.bandwidth import (MIN_PROBE_BYTES, LinkEstimate, LinkProber, choose_encoding, link_encoding,
                                     upload_budget_bps)


class Bucket:
    """One direction of a tc-tbf-like shaper: ``rate`` bit/s, ``burst`` bytes at line speed, ``queue`` bytes
    of backlog before it drops (a best-effort probe that does not fit is lost whole)."""

    def __init__(self, rate: float, burst: int, queue: int) -> None:
        self.rate, self.burst, self.queue = rate, burst, queue
        self.tokens, self.at = float(burst), 0.0

    def send(self, now: float, size: int) -> float | None:
        """Seconds until ``size`` bytes sent at ``now`` have crossed, or None when the queue drops them."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate / 8)
        self.at = now
        if size > self.queue + self.tokens:
            return None
        wait = max(size - self.tokens, 0.0) * 8 / self.rate
        self.tokens = max(self.tokens - size, 0.0)
        self.at = now + wait
        return wait


class SimLink:
    """A prober talking to a cloud across shaped buckets, with a fixed latency and positive noise per probe."""

    def __init__(self, rate: float, burst: int = 1600, queue_s: float = 0.4, latency_s: float = 0.002,
                 noise_s: float = 0.002, seed: int = 0, **prober) -> None:
        self.now = 0.0
        self.prober = LinkProber(clock=lambda: self.now, **prober)
        self.latency_s, self.noise_s = latency_s, noise_s
        self.rng = np.random.default_rng(seed)
        self.up = self.down = None
        self.set_rate(rate, burst, queue_s)
        self.down_at: float | None = None  # link cut until this time
        self.sent: list = []

    def set_rate(self, rate: float, burst: int = 1600, queue_s: float = 0.4) -> None:
        queue = int(rate * queue_s / 8)
        self.up, self.down = Bucket(rate, burst, queue), Bucket(rate, burst, queue)

    def run(self, seconds: float) -> LinkEstimate:
        end = self.now + seconds
        while self.now < end:
            probe = self.prober.poll()
            if probe is None:
                self.now += 0.01
                continue
            self.sent.append(probe)
            cut = self.down_at is not None and self.now < self.down_at
            there = None if cut else self.up.send(self.now, probe.up_bytes)
            back = None if there is None else self.down.send(self.now + there + self.latency_s / 2, probe.down_bytes)
            if back is None:
                self.now += 0.01
                continue
            self.now += there + back + self.latency_s + self.rng.exponential(self.noise_s)
            self.prober.on_reply(probe.seq, probe.up_bytes, probe.down_bytes)
        return self.prober.estimate()


@pytest.mark.parametrize("rate", [50e6, 2e6, 256e3])
def test_the_estimate_finds_the_shaped_rate_both_ways_whatever_the_burst_and_latency(rate):
    for burst in (1600, 3000):
        link = SimLink(rate, burst=burst, latency_s=0.02)
        e = link.run(60)
        assert e.link_up and e.loss == 0
        for measured in (e.uplink_bps, e.downlink_bps):
            assert measured == pytest.approx(rate, rel=0.1), (rate, burst, e)
        assert e.rtt_ms == pytest.approx(20, abs=5)


def test_probing_keeps_to_a_quarter_of_the_link_and_probe_sizes_follow_it():
    for rate, largest in ((50e6, 262144), (2e6, 32768), (256e3, 4096)):
        link = SimLink(rate)
        link.run(60)
        late = [p for p in link.sent[len(link.sent) // 2:] if p.kind != "echo"]
        assert max(p.size for p in late) == largest
        probe_bits = 8 * sum(p.size for p in late)
        assert probe_bits / 2 <= 0.3 * rate * 30  # per direction, over the last 30 s
    link = SimLink(1e9, max_up_bytes=8192, max_down_bytes=0)  # configured limits hold; 0 = not probed
    link.run(10)
    assert max(p.up_bytes for p in link.sent) == 8192 and not any(p.kind == "down" for p in link.sent)
    assert link.prober.estimate().downlink_bps == 0


def test_a_step_change_is_followed_within_a_few_cycles_even_when_probes_overflow_the_queue():
    link = SimLink(50e6)
    link.run(20)
    for rate in (2e6, 256e3, 50e6):
        link.set_rate(rate)
        e = link.run(25)
        assert e.uplink_bps == pytest.approx(rate, rel=0.1) and e.downlink_bps == pytest.approx(rate, rel=0.1)


def test_a_dead_link_is_reported_down_within_three_echoes_and_up_again_when_it_returns():
    link = SimLink(2e6, timeout_s=1.0)
    link.run(10)
    link.down_at = link.now + 20
    e = link.run(4.5)
    assert not e.link_up and upload_budget_bps(e) == 0.0
    cut = link.sent[-1].seq
    link.run(15.5)
    assert all(p.kind == "echo" for p in link.sent if p.seq > cut), "payload sent into a dead link"
    e = link.run(10)
    assert e.link_up and e.uplink_bps == pytest.approx(2e6, rel=0.1)


def test_late_or_foreign_answers_are_not_measurements():
    now = [0.0]
    prober = LinkProber(clock=lambda: now[0], timeout_s=1.0)
    echo = prober.poll()
    assert echo.kind == "echo" and prober.poll() is None  # one probe at a time
    now[0] = 1.5
    up = prober.poll()  # the echo is given up, the next cycle starts with another echo
    assert up.kind == "echo" and prober.estimate().loss == 1.0
    prober.on_reply(echo.seq, 0, 0)  # the first echo, too late
    now[0] = 1.6
    prober.on_reply(up.seq, 5, 0)  # sizes that do not match what was sent
    assert prober.outstanding is not None
    prober.on_reply(up.seq, 0, 0)
    assert prober.estimate().link_up and prober.estimate().rtt_ms == pytest.approx(100)
    with pytest.raises(ValueError):
        prober.configure(period_s=0)
    with pytest.raises(ValueError):
        prober.configure(max_up_bytes=-1)
    prober.configure(max_up_bytes=1024)
    assert prober.directions["up"].size == 1024 < MIN_PROBE_BYTES


def test_upload_budget_is_a_share_of_the_uplink_less_loss():
    e = LinkEstimate(1e6, 2e6, 10.0, 12.0, 0.25, True)
    assert upload_budget_bps(e, share=0.5) == pytest.approx(1e6 * 0.5 * 0.75)
    with pytest.raises(ValueError):
        upload_budget_bps(e, share=0)
    assert math.isinf(LinkProber().estimate().rtt_ms) and not LinkProber().estimate().link_up
    echoes_only = LinkEstimate(0.0, 0.0, 2.0, 3.0, 0.0, True)  # up, its rate not measured yet: no limit, not none
    assert math.isinf(upload_budget_bps(echoes_only)) and upload_budget_bps(replace(echoes_only, link_up=False)) == 0


def test_update_encoding_shrinks_to_fit_the_downlink():
    mb = 1_000_000
    assert choose_encoding(mb, downlink_bps=100e6) == "raw"  # 80 ms
    assert choose_encoding(mb, downlink_bps=5e6) == "fp16"  # raw 1.6 s, fp16 0.8 s
    assert choose_encoding(mb, downlink_bps=1e6) == "int8"  # even int8 misses: the smallest there is
    assert link_encoding("fp16", mb, 100e6) == "fp16"  # never larger than configured
    assert link_encoding("raw", mb, 3e6) == "int8"
    assert link_encoding("fp16", mb, 0.0) == "fp16"  # not measured yet
    with pytest.raises(ValueError):
        link_encoding("bf16", mb, 1e6)
    with pytest.raises(ValueError, match="finite"):
        link_encoding("fp16", mb, math.nan)
