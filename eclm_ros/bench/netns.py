"""A real, shaped link between a cloud and an edge on one machine: two network namespaces joined by a veth pair.

Linux only, as root, with `ip` and `tc` (iproute2). The pair gets link-local addresses (169.254.77.1/30 on the
cloud end, .2 on the edge end) and a route for discovery multicast, nothing else: no route leaves the two
namespaces, so traffic goes only between them. Names carry a random tag, so concurrent runs never meet, and
everything is removed on close, also after a failure (deleting a namespace deletes its end of the pair).
Shaping is ``tc tbf`` on both ends (netem is not in every kernel: rate and cuts only); a cut takes the edge's
end down, as a robot's radio losing its link would.

Processes run inside with ``command(side, argv)``. Fast DDS must not use shared memory between them (it would
bypass the link through /dev/shm): they get ``FASTDDS_PROFILE``, UDP only.
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

CLOUD, EDGE = "cloud", "edge"
ADDRESSES = {CLOUD: "169.254.77.1/30", EDGE: "169.254.77.2/30"}
MULTICAST = "224.0.0.0/4"  # DDS discovery
QUEUE = "400ms"  # tbf's queue: what a bottleneck holds before it drops
MIN_BURST = 1600  # bytes: one full frame (tbf drops packets larger than its burst)
BURST_S = 0.001  # the bucket: 1 ms of the rate, at least one frame


def fastdds_profile() -> Path:
    """The shipped Fast DDS profile for an edge and a cloud on two machines over a real link (UDP only)."""
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("eclm_ros")) / "config" / "fastdds_link_profile.xml"


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise LinkError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


class LinkError(RuntimeError):
    """A namespace, link or shaping command failed (the message is the command and what it said)."""


def unavailable() -> str | None:
    """None when namespaces and shaped links can be made here, else why not (a test skips with it)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run as root, or in CI as root)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' is missing (apt install iproute2)"
    try:
        with ShapedLink() as link:
            link.shape(1e6)
    except (LinkError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot make a shaped veth pair between network namespaces here: {exc}"
    return None


class ShapedLink:
    """Two namespaces, one veth pair, shaped and cut on demand; a context manager that always cleans up."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.namespaces = {CLOUD: f"eclm-{tag}-cloud", EDGE: f"eclm-{tag}-edge"}
        self.devices = {CLOUD: f"ec{tag}c", EDGE: f"ec{tag}e"}  # interface names: at most 15 characters
        self.rate_bps: float | None = None

    def __enter__(self) -> "ShapedLink":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        for ns in self.namespaces.values():
            _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", self.devices[CLOUD], "type", "veth", "peer", "name", self.devices[EDGE])
        for side, ns in self.namespaces.items():
            _run("ip", "link", "set", self.devices[side], "netns", ns)
            _run("ip", "-n", ns, "addr", "add", ADDRESSES[side], "dev", self.devices[side])
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        self.restore()

    def close(self) -> None:
        """Remove both namespaces (and with them the pair); safe to call twice or after a half-made link."""
        for ns in self.namespaces.values():
            _run("ip", "netns", "del", ns, check=False)

    def command(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``side``'s namespace (the environment passes through)."""
        return ["ip", "netns", "exec", self.namespaces[side], *argv]

    def shape(self, rate_bps: float) -> None:
        """Both directions to ``rate_bps`` (tbf: 1 ms bucket, 400 ms queue)."""
        burst = max(int(rate_bps * BURST_S / 8), MIN_BURST)
        for side, ns in self.namespaces.items():
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", self.devices[side], "root", "tbf",
                 "rate", f"{int(rate_bps)}bit", "burst", str(burst), "latency", QUEUE)
        self.rate_bps = rate_bps

    def cut(self) -> None:
        """The edge's end goes down: nothing crosses either way (and the kernel drops its routes)."""
        _run("ip", "-n", self.namespaces[EDGE], "link", "set", self.devices[EDGE], "down")

    def restore(self) -> None:
        """Both ends up, with the discovery multicast route a network manager would put back."""
        for side, ns in self.namespaces.items():
            _run("ip", "-n", ns, "link", "set", self.devices[side], "up")
            _run("ip", "-n", ns, "route", "replace", MULTICAST, "dev", self.devices[side])

    def sent(self, side: str) -> tuple[int, int]:
        """(bytes sent, packets dropped) by ``side``'s end since it was shaped (tc's counters)."""
        out = _run("ip", "netns", "exec", self.namespaces[side], "tc", "-s", "qdisc", "show", "dev",
                   self.devices[side]).stdout
        if "Sent " not in out:
            return 0, 0
        return int(out.split("Sent ")[1].split()[0]), int(out.split("dropped ")[1].split(",")[0])
