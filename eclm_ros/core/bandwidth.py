"""Link estimates from probes, and the budgets that follow from them.

The bandwidth monitor sends best-effort probes to the cloud and times the answers (``LinkProber``). How, and why,
from measurements over a veth pair shaped with ``tc tbf`` (README, "Real links"):

- **One direction per probe.** A probe with payload both ways measures the sum of two transfers: the old probe
  read 1.07 Mbit/s on a 2 Mbit/s link.
- **A difference of two sizes.** Each direction sends a probe of L bytes and one of L/2; the rate is
  ``8 (L - L/2) / (rtt_L - rtt_L/2)``. What both pay alike cancels: DDS and scheduling latency, the round trip,
  a shaper's burst up to L/3 (the cycle runs echo, up L/2, down L/2, up L, down L, and each payload probe waits
  twice the previous one's time, so a burst refills and both probes of a pair start with the same bucket). A pair
  whose times do not scale with its sizes is no measurement: the small one queued behind an upload (ignored), or
  it crossed inside the burst (that direction's probes grow when it repeats).
- **Sizes follow the link.** L is the power of two nearest to ``probe_time_s`` of the newest pair's rate
  (changed only when that is twice or half L), within [MIN_PROBE_BYTES, the configured maximum]; a lost probe
  quarters it (a probe larger than the bottleneck's queue never arrives: probes are best effort, as a reliable
  one would be repaired and resent into the link it measures); probing takes at most PROBE_SHARE of the link's
  time (a cycle on a slow link waits longer).
- **Robust and quick.** Of the last ``window`` pairs of the newest size, each size's fastest round trip counts
  (traffic queued ahead of a probe, an upload, only ever adds time; one pair of a new size: the window's median);
  a step change that three pairs in a row agree on replaces the older pairs at once.
- **Goodput.** Rates are payload bytes, what the edge's messages get; the link carries ~12 % more (RTPS, UDP, IP
  and Ethernet headers of 1,400-byte datagrams).

Edges keep their uploads under a share of the measured uplink; the cloud picks the update encoding the downlink
affords.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

MIN_PROBE_BYTES = 2048  # the large probe's floor (the small one is half): above a shaper's usual 1-2 frame burst
PROBE_SHARE = 0.25  # probe cycles take at most this share of the link's time
LINK_DOWN_AFTER = 3  # echoes lost in a row before the link is reported down
RATIO = (1.25, 6.0)  # beyond the echo, a large probe takes this many times its half's time, or the pair is no rate
MEASURABLE_S = 0.01  # a large probe that crosses faster than this is too small to time
SUSPECT = 3  # pairs in a row whose small probe crossed in no time before that direction's probes grow
STEP, STEP_PAIRS = 1.5, 3  # this many pairs in a row this far from the estimate, on one side, are a step change


@dataclass(frozen=True)
class LinkEstimate:
    uplink_bps: float
    downlink_bps: float
    rtt_ms: float
    rtt_p95_ms: float
    loss: float
    link_up: bool


@dataclass(frozen=True)
class Probe:
    """One probe: ``kind`` echo (nothing either way), up (``size`` bytes to the cloud) or down (``size`` bytes
    back)."""

    seq: int
    kind: str
    size: int = 0

    @property
    def up_bytes(self) -> int:
        return self.size if self.kind == "up" else 0

    @property
    def down_bytes(self) -> int:
        return self.size if self.kind == "down" else 0


def _rate(size: int, small: float, large: float) -> float:
    """Bit/s of a pair: the large probe's extra half over the extra time it took."""
    return 8 * (size - size // 2) / (large - small)


def _pow2(n: float) -> int:
    return 1 << max(int(round(np.log2(max(n, 1.0)))), 0)


class Direction:
    """One direction of the link: its large probe's size, the smallest size the link's burst allows, and its
    recent probe pairs (size, RTT of the half, RTT of the whole)."""

    def __init__(self, max_bytes: int, window: int) -> None:
        self.max_bytes = max_bytes
        self.floor = min(MIN_PROBE_BYTES, max_bytes)
        self.size = self.floor
        self.suspect = 0  # pairs in a row that looked burst-dominated
        self.pairs: deque[tuple[int, float, float]] = deque(maxlen=window)

    @property
    def probed(self) -> bool:
        return self.max_bytes >= 2

    def estimate(self) -> float:
        """From the recent pairs of the newest size, each size's fastest: traffic queued ahead of a probe only
        ever adds time, so the fastest of each is the one that met an empty queue."""
        if not self.pairs:
            return 0.0
        size = self.pairs[-1][0]
        same = [(small, large) for n, small, large in self.pairs if n == size]
        small, large = min(s for s, _ in same), min(x for _, x in same)
        if len(same) < 2 or large <= small:  # one pair of a new size is no lower envelope: the window's median
            return float(np.median([_rate(n, s, x) for n, s, x in self.pairs]))
        return _rate(size, small, large)

    def add(self, small: float, large: float, probe_time_s: float) -> None:
        """A pair's times; a step change STEP_PAIRS pairs in a row agree on drops the pairs before them."""
        before = self.estimate()
        self.pairs.append((self.size, small, large))
        recent = [_rate(n, s, x) for n, s, x in list(self.pairs)[-STEP_PAIRS:]]
        if len(self.pairs) > STEP_PAIRS and (all(r > STEP * before for r in recent) or
                                             all(r < before / STEP for r in recent)):
            for _ in range(len(self.pairs) - STEP_PAIRS):
                self.pairs.popleft()
        # sized by the newest pair, not the estimate: after a step the estimate waits for three pairs to agree,
        # and sizes from the old rate would be lost (too large) or too short to time (too small) until then
        self.resize(recent[-1] * probe_time_s / 8)

    def resize(self, wanted_bytes: float) -> None:
        """The power of two nearest ``wanted_bytes`` within [floor, max], changed only when ``wanted_bytes`` is
        at least twice or at most half the size now (an estimate near a boundary would flip it every cycle)."""
        self.floor = min(self.floor, self.max_bytes)
        if not self.size / 2 < wanted_bytes < 2 * self.size:
            self.size = _pow2(wanted_bytes)
        self.size = max(min(self.size, self.max_bytes), self.floor)

    def too_small(self) -> None:
        """The small probe crossed in no time (inside the shaper's burst): measure with larger ones from now."""
        self.floor = min(2 * self.size, self.max_bytes)
        self.size, self.suspect = self.floor, 0

    def lost(self) -> None:
        """A probe of this direction did not arrive: it was too large for the link's queue (or the link is gone)."""
        self.size = max(self.size // 4, min(MIN_PROBE_BYTES, self.max_bytes))
        self.floor = min(self.floor, self.size)


class LinkProber:
    """What to probe next and what the probes say. The caller sends each ``Probe`` that ``poll`` returns (call it
    often, and right after each ``on_reply``) and reports every answer; it never waits."""

    def __init__(self, max_up_bytes: int = 262144, max_down_bytes: int = 262144, probe_time_s: float = 0.1,
                 period_s: float = 1.0, timeout_s: float = 2.0, window: int = 5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.directions = {"up": Direction(max_up_bytes, window), "down": Direction(max_down_bytes, window)}
        self.echoes: deque[float | None] = deque(maxlen=max(window, 2 * LINK_DOWN_AFTER))  # RTT s, None = lost
        self.probe_time_s, self.period_s, self.timeout_s = probe_time_s, period_s, timeout_s
        self.configure(probe_time_s=probe_time_s, period_s=period_s, timeout_s=timeout_s)
        self.seq = 0
        self.plan: list[Probe] = []
        self.outstanding: tuple[Probe, float] | None = None
        self.cycle: dict[tuple[str, int], float] = {}  # (kind, size) -> RTT of this cycle's probes
        self.cycle_start = self.busy = self.idle_until = 0.0
        self.next_cycle = -float("inf")

    def configure(self, **changes: float) -> None:
        """Change settings while probing (the monitor's run-time parameters): ``max_up_bytes``,
        ``max_down_bytes``, ``probe_time_s``, ``period_s``, ``timeout_s``; all are checked before any applies."""
        sizes = {"max_up_bytes": "up", "max_down_bytes": "down"}
        times = ("probe_time_s", "period_s", "timeout_s")
        for name, value in changes.items():
            if name not in sizes and name not in times:
                raise ValueError(f"{name} is not a probe setting")
            if name in times and not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r} refused: must be a positive time")
            if name in sizes and value < 0:
                raise ValueError(f"{name}={value!r} refused: must be >= 0 bytes")
        for name, value in changes.items():
            if name in sizes:
                d = self.directions[sizes[name]]
                d.max_bytes = int(value)
                d.resize(d.size)
            else:
                setattr(self, name, float(value))

    # -- probing ----------------------------------------------------------------------------------------
    def poll(self) -> Probe | None:
        """The probe to send now, or None: one at a time, a lost one given up after ``timeout_s``."""
        now = self.clock()
        if self.outstanding is not None:
            probe, sent = self.outstanding
            if now - sent <= self.timeout_s:
                return None
            self.outstanding = None
            self._lost(probe)
        if not self.plan:
            if now < self.next_cycle:
                return None
            self._start_cycle(now)
        if now < self.idle_until and self.plan[0].kind != "echo":
            return None
        probe = self.plan.pop(0)
        self.outstanding = (probe, now)
        return probe

    def _start_cycle(self, now: float) -> None:
        self.cycle, self.cycle_start, self.busy = {}, now, 0.0
        kinds = [("echo", 0)]
        for half in (True, False):  # both directions small, then both large: each starts on an idle link
            kinds += [(name, d.size // 2 if half else d.size) for name, d in self.directions.items() if d.probed]
        for kind, size in kinds:
            self.seq += 1
            self.plan.append(Probe(self.seq, kind, size))

    def on_reply(self, seq: int, received_bytes: int, reply_bytes: int) -> None:
        """The cloud's answer to probe ``seq``: how much of the probe it received, and its own payload's size."""
        if self.outstanding is None or self.outstanding[0].seq != seq:
            return  # answered after it was given up
        probe, sent = self.outstanding
        if received_bytes != probe.up_bytes or reply_bytes != probe.down_bytes:
            return  # not what was asked: not a measurement
        self.outstanding = None
        now = self.clock()
        rtt = now - sent
        if probe.kind == "echo":
            self.echoes.append(rtt)
        else:
            self.cycle[(probe.kind, probe.size)] = rtt
            self.busy += rtt
            self._measure(probe.kind)
            # the next payload probe waits twice this one's time on the link, so a burst (up to 2/3 of the small
            # probe) refills and both probes of a pair start with the same token bucket
            base = min((r for r in self.echoes if r is not None), default=0.0)
            self.idle_until = now + min(2 * max(rtt - base, 0.0), self.timeout_s)
        if not self.plan:
            self._end_cycle()

    def _measure(self, kind: str) -> None:
        """A direction's pair is in: a rate, unless the pair's times do not scale with their sizes. Beyond the
        echo, L takes twice L/2's time (3x with a burst of L/4, 6x with one of 0.4 L). Much less:
        something queued ahead of the small probe (an upload), ignored. Much more: the small one rode the burst
        (or the large one queued), and when that repeats the probes grow."""
        d = self.directions[kind]
        small, large = self.cycle.get((kind, d.size // 2)), self.cycle.get((kind, d.size))
        if small is None or large is None:
            return
        base = min((r for r in self.echoes if r is not None), default=0.0)
        t_small, t_large = small - base, large - base
        at_most = d.size >= d.max_bytes  # cannot grow: take what there is
        if t_large < MEASURABLE_S and not at_most:  # lost in the noise of a fast link: four times larger at once
            d.size = min(4 * d.size, d.max_bytes)
            return
        if t_small <= 0 or t_large > RATIO[1] * t_small:
            d.suspect += 1
            if d.suspect >= SUSPECT and not at_most:
                d.too_small()
            if not (at_most and t_large > t_small > 0):
                return
        elif t_large < RATIO[0] * t_small:
            return
        d.suspect = 0
        d.add(small, large, self.probe_time_s)

    def _lost(self, probe: Probe) -> None:
        """A probe that timed out: the link may be gone, so the next cycle starts at once with its echo (no more
        payload into a dead link); a payload probe that is lost while echoes return was too large."""
        if probe.kind == "echo":
            self.echoes.append(None)
        else:
            self.directions[probe.kind].lost()
        self.plan = []
        self.next_cycle = -float("inf")

    def _end_cycle(self) -> None:
        """The next cycle starts a period later, or later still when this one's probes kept the link busy for more
        than PROBE_SHARE of that (time waiting for a lost probe is not the link's)."""
        self.next_cycle = self.cycle_start + max(self.period_s, self.busy / PROBE_SHARE)

    # -- the estimate -----------------------------------------------------------------------------------
    def estimate(self) -> LinkEstimate:
        echoes = list(self.echoes)
        ok = [r for r in echoes if r is not None]
        recent = echoes[-LINK_DOWN_AFTER:]
        link_up = bool(ok) and any(r is not None for r in recent)
        loss = 1.0 - len(ok) / len(echoes) if echoes else 1.0
        if not ok:
            return LinkEstimate(0.0, 0.0, float("inf"), float("inf"), loss, False)
        return LinkEstimate(self.directions["up"].estimate(), self.directions["down"].estimate(),
                            float(np.median(ok) * 1000), float(np.percentile(ok, 95) * 1000), loss, link_up)


def upload_budget_bps(estimate: LinkEstimate, share: float = 0.5, floor_bps: float = 0.0) -> float:
    """Bits per second the edge's sample uploads may use: a share of the measured uplink (0 when down; infinite,
    no limit, while only echoes have come back: they say the link is up, not how fast it is, and on a fast link
    the first rate can take tens of seconds, during which a budget of 0 would hold every upload back)."""
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not estimate.link_up:
        return 0.0
    if estimate.uplink_bps <= 0:
        return float("inf")
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
