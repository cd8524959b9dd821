"""Faults on the real system: node processes over DDS, killed, starved of disk, time-shifted and flooded.

Each scenario starts the node executables (``Rig``), does one kind of harm some number of times and returns a
``FaultResult`` row: repetitions, crashes (a node process that died without being killed), the largest resident
memory of a node, how many state files loaded, seconds until the system was back, and ``problems``: every
expectation that did not hold, in words (the suite asserts there are none; the benchmark prints them). The
expectations: nothing crashes, memory stays bounded, the cloud's state always loads and versions never go
back, what the cloud learned survives its restart up to the last save, refusals are counted with their reason
and serving goes on.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.checkpoint import default_path
from ..core.signing import KeyRing
from ..ros.launcher import NodeProcess, clean_shared_memory, wait_for
from .report import Tables, markdown_tables, print_tables
from .rig import STATE_FILE, Rig

CLOUD_NS = "/eclm"


@dataclass
class FaultResult:
    fault: str
    repetitions: int = 0
    crashes: int = 0
    max_rss_mb: float = 0.0
    state_loads: str = "-"  # "loaded/checked" for faults that touch the cloud's state
    recovered_s: list[float] = field(default_factory=list)  # per repetition: harm done -> serving again
    notes: str = ""
    problems: list[str] = field(default_factory=list)

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def row(self) -> dict[str, Any]:
        rec = self.recovered_s
        return {"fault": self.fault, "repetitions": self.repetitions, "crashes": self.crashes,
                "max_rss_mb": round(self.max_rss_mb), "state_loads": self.state_loads,
                "recovered_s": f"{np.median(rec):.1f} (max {max(rec):.1f})" if rec else "-",
                "notes": self.notes, "problems": self.problems}


def _learned(state: dict) -> dict[str, tuple[int, int]]:
    """Per edge, (version, frames learned from) in a state file."""
    edges = state["strategy"]["edges"]
    return {e: (int(v), int(edges.get(e, {}).get("frames", 0))) for e, v in state["versions"].items()}


def _serving(rig: Rig, edges: list[str], above: dict[str, int], timeout: float, what: str) -> float:
    """Seconds until every edge serves a version above ``above``."""
    t0 = time.monotonic()
    wait_for(lambda: all(rig.version(e) > above.get(e, -1) for e in edges), timeout, what)
    return time.monotonic() - t0


def _loop(rig: Rig, edges: list[str], first_version: int = 2, timeout: float = 120.0) -> NodeProcess:
    """The cloud and one camera-fed edge per id, serving the cloud's models."""
    cloud = rig.start("cloud_coordinator", CLOUD_NS)
    for edge in edges:
        rig.start("edge_learner", f"/{edge}")
        rig.start("camera_stream", f"/{edge}")
    _serving(rig, edges, {e: first_version - 1 for e in edges}, timeout, f"{edges} serving version {first_version}")
    return cloud


# -- the faults -----------------------------------------------------------------------------------------------
def cloud_kills(rig: Rig, kills: int, seed: int = 0, edges: tuple[str, ...] = ("robot1", "robot2")) -> FaultResult:
    """SIGKILL the cloud at random moments while the edges learn, then restart it: every state file loads,
    versions never go back, and a restarted cloud resumes from what it saved (frames learned, per edge)."""
    result, rng, edges = FaultResult("cloud SIGKILL while edges learn"), random.Random(seed), list(edges)
    cloud = _loop(rig, edges)
    loads = 0
    for _ in range(kills):
        time.sleep(rng.uniform(1.0, 6.0))
        rig.kill(cloud)
        at_kill = {e: rig.version(e) for e in edges}
        saved = rig.load_state()
        loads += saved is not None
        result.expect(saved is not None, "the state file did not load after a SIGKILL")
        counted = len(rig.predictions(edges[0]))
        wait_for(lambda: len(rig.predictions(edges[0])) > counted + 10, 60, "frames served while the cloud is dead")
        cloud = rig.start("cloud_coordinator", CLOUD_NS)
        result.recovered_s.append(_serving(rig, edges, at_kill, 120, f"edges beyond versions {at_kill}"))
        if saved is not None:  # the restarted cloud's own saves carry on from the file it found
            before = _learned(saved)
            wait_for(lambda: (s := rig.load_state()) is not None and
                     all(_learned(s).get(e, (0, 0))[0] > before.get(e, (0, 0))[0] for e in edges), 60,
                     "a save by the restarted cloud")
            after = _learned(rig.load_state())
            for e in edges:
                result.expect(after[e][0] > before.get(e, (0, 0))[0], f"{e}: version went back ({before} -> {after})")
                result.expect(after[e][1] >= before.get(e, (0, 0))[1],
                              f"{e}: frames learned went back from {before[e][1]} to {after[e][1]}: not restored")
        result.expect(f"{len(edges)} edges restored" in cloud.output(), "the restarted cloud restored no state")
        result.repetitions += 1
    result.state_loads = f"{loads}/{kills}"
    result.crashes = rig.crashes()
    result.notes = f"{len(edges)} edges learning; kills 1-6 s apart after each recovery"
    return result


def edge_kills(rig: Rig, kills: int, edge: str = "robot1") -> FaultResult:
    """SIGKILL an edge and restart it: it registers again and the cloud resyncs it at a newer version."""
    result = FaultResult("edge SIGKILL and restart")
    _loop(rig, [edge])
    for _ in range(kills):
        proc = rig.procs[next(k for k in reversed(rig.procs) if k.startswith(f"/{edge}/edge_learner"))]
        rig.kill(proc)
        at_kill = rig.version(edge)
        t0 = time.monotonic()
        rig.start("edge_learner", f"/{edge}")
        wait_for(lambda: rig.version(edge) > at_kill, 120, f"{edge} resynced beyond version {at_kill}")
        result.recovered_s.append(time.monotonic() - t0)
        result.repetitions += 1
    result.crashes = rig.crashes()
    result.notes = "recovered = restart -> serving a version above the one before the kill"
    return result


def _mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs (root); the reason when this machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                         text=True)
    return None if run.returncode == 0 else f"cannot mount a tmpfs for the state disk: {run.stderr.strip()}"


def disk_full(rig_factory: Callable[..., Rig], out: Path, size: str = "96m") -> FaultResult | str:
    """The cloud's state disk fills up: it says why on its log and /diagnostics, keeps serving and learning,
    keeps the last good state file, and saves again once there is space. A str: why it could not run."""
    disk = out / "state-disk"
    reason = _mount_tmpfs(disk, size)
    if reason:
        return reason
    result = FaultResult("cloud state disk full")
    rig = rig_factory(state_dir=disk)
    try:
        cloud = _loop(rig, ["robot1"])
        wait_for(lambda: rig.load_state() is not None, 60, "a first state save")
        filler = disk / "filler"
        with open(filler, "wb") as f:  # the disk is full once a write fails
            try:
                while True:
                    f.write(bytes(1 << 20))
                    f.flush()
            except OSError:
                pass
        t_full, v_full = time.monotonic(), rig.version("robot1")
        wait_for(lambda: rig.diagnostics("cloud_coordinator", "state") and
                 "No space left" in rig.diagnostics("cloud_coordinator", "state")[1], 60,
                 "the cloud reporting the full disk on /diagnostics")
        result.expect(rig.diagnostics("cloud_coordinator", "state")[0] == 2, "a full state disk is not an ERROR")
        result.expect("No space left on device" in cloud.output(), "the cloud did not log why it cannot save")
        _serving(rig, ["robot1"], {"robot1": v_full}, 60, "updates while the disk is full")
        result.expect(rig.load_state() is not None, "the last good state file did not load while the disk was full")
        wait_for(lambda: rig.value("cloud_coordinator", "state", "save_failures") >= 3, 60, "three failed saves")
        failures = rig.value("cloud_coordinator", "state", "save_failures")
        filler.unlink()
        saves = rig.value("cloud_coordinator", "state", "saves")
        wait_for(lambda: rig.value("cloud_coordinator", "state", "saves") > saves and
                 rig.diagnostics("cloud_coordinator", "state")[0] == 0, 60, "a save once space is back")
        result.recovered_s.append(time.monotonic() - t_full)
        result.expect(rig.load_state() is not None, "the state saved after the disk emptied does not load")
        result.state_loads = "2/2" if not result.problems else "see problems"
        result.repetitions, result.crashes = 1, rig.crashes()
        result.max_rss_mb = max(rig.rss_mb.values(), default=0.0)
        result.notes = f"tmpfs of {size}; {failures:.0f} saves failed while full, then saved again"
    except AssertionError as exc:  # a wait that timed out
        result.problems.append(str(exc))
        (out / "logs.txt").write_text(rig.logs())
    finally:
        rig.close()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    return result


def clock_jumps(rig: Rig, jumps: tuple[float, ...] = (3600.0, -1800.0, 86400.0, -86000.0)) -> FaultResult:
    """Every node on ``use_sim_time`` with a /clock the rig publishes (50 Hz, real pace), jumped forward and
    back: nothing crashes, frames are served, and the edge keeps (or regains) its registration and updates."""
    from rosgraph_msgs.msg import Clock

    result = FaultResult("clock jumps under use_sim_time")
    for name in rig.params:
        rig.params[name]["use_sim_time"] = True
    pub = rig.recorder.publisher(Clock, "/clock", 10)
    sim = {"t": 1_000_000.0, "run": True}

    def tick() -> None:
        while sim["run"]:
            sim["t"] += 0.02
            sec = int(sim["t"])
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = sec, int((sim["t"] - sec) * 1e9)
            pub.publish(msg)
            time.sleep(0.02)
    clock = threading.Thread(target=tick, daemon=True)
    clock.start()
    try:
        _loop(rig, ["robot1"])
        for jump in jumps:
            before = rig.version("robot1")
            sim["t"] += jump
            t0 = time.monotonic()
            _serving(rig, ["robot1"], {"robot1": before}, 120, f"an update after a clock jump of {jump:+.0f} s")
            result.recovered_s.append(time.monotonic() - t0)
            wait_for(lambda: abs(rig.predictions("robot1")[-1].header.stamp.sec - sim["t"]) < 30, 60,
                     "frames stamped by the jumped /clock (the camera stamps with its ROS clock)")
            try:  # a jump can make the last contact look stale until the next one: regained, not kept, is the bar
                wait_for(lambda: (link := rig.diagnostics("edge_learner", "cloud link")) is not None and link[0] == 0,
                         60, f"the edge's cloud registration after a {jump:+.0f} s jump")
            except AssertionError as exc:
                result.problems.append(str(exc))
            result.repetitions += 1
    finally:
        sim["run"] = False
        clock.join()
    result.crashes = rig.crashes()
    result.notes = "jumps " + ", ".join(f"{j:+.0f} s" for j in jumps) + "; recovered = jump -> next update"
    return result


def _signed_batches(ring: KeyRing, edge: str, count: int, frames: int, bad_every: int):
    """``count`` SampleBatch messages as ``edge`` would upload them, signed with its key; every
    ``bad_every``-th carries a frame that is not an image (signed too: a broken edge, not a forger)."""
    from ..core.messages import SampleBatch
    from ..core.selection import encode_frames
    from ..core.signing import SCHEME, load_private_key, sign
    from ..ros.ros_io import samples_to_msg

    from builtin_interfaces.msg import Time

    key, rng = load_private_key(ring.edge_private(edge)), np.random.default_rng(0)
    seq = time.time_ns() // 1000
    for i in range(count):
        views = list(rng.integers(0, 255, (frames, 28, 28), dtype=np.uint8))
        blobs = encode_frames(views)
        if bad_every and i % bad_every == bad_every - 1:
            blobs[0] = b"not an image"
        probs = np.full((frames, 10), 0.1, np.float32)
        batch = SampleBatch(edge, seq + i, 1, "png", blobs, [(28, 28, 1)] * frames, [(0, 0)] * frames,
                            [0] * frames, [2.3] * frames, probs)
        batch.signature_scheme, batch.signature = SCHEME, sign(key, batch.signed_bytes())
        yield samples_to_msg(batch, Time())


def upload_flood(rig: Rig, batches: int = 3000, frames: int = 16, queue_bound: int = 8) -> FaultResult:
    """A registered, enrolled edge uploads far more than the cloud can learn from (and some broken frames): the
    learning queue stays within its bound, the rest is dropped and counted, refusals are counted, the cloud's
    memory stays bounded and it still registers edges afterwards."""
    from ..msg import DeviceProfile, SampleBatch
    from ..ros.ros_io import RELIABLE_QOS
    from ..srv import RegisterEdge

    result = FaultResult("upload flood to the cloud")
    rig.params["cloud_coordinator"]["max_pending_batches"] = queue_bound
    cloud = rig.start("cloud_coordinator", CLOUD_NS)
    edge = "flood1"
    rig.ring.enrol(edge)
    client = rig.recorder.node.create_client(RegisterEdge, f"{CLOUD_NS}/register_edge")

    def register() -> bool:
        if not client.wait_for_service(timeout_sec=30):
            return False
        future = client.call_async(RegisterEdge.Request(edge_id=edge, profile=DeviceProfile(), current_version=0))
        return bool(wait_for(lambda: future.done() and future.result(), 60, "a registration answer").accepted)
    result.expect(register(), "the cloud refused the flooding edge's registration")
    wait_for(lambda: rig.diagnostics("cloud_coordinator", "uploads"), 30, "the cloud's diagnostics")
    rss_before = rig.rss_now(cloud)
    pub = rig.recorder.publisher(SampleBatch, f"{CLOUD_NS}/samples", RELIABLE_QOS)
    queue_seen, t0 = 0, time.monotonic()
    for i, msg in enumerate(_signed_batches(rig.ring, edge, batches, frames, bad_every=10)):
        pub.publish(msg)
        if i % 50 == 0:
            queue_seen = max(queue_seen, int(rig.value("cloud_coordinator", "uploads", "queue")))
    sent_s = time.monotonic() - t0
    wait_for(lambda: rig.value("cloud_coordinator", "uploads", "queue", 1) == 0, 120, "the queue to drain")
    t_drained = time.monotonic() - t0
    dropped = rig.value("cloud_coordinator", "uploads", "dropped_batches")
    rejected = rig.value("cloud_coordinator", "uploads", "rejected_batches")
    learned = rig.value("cloud_coordinator", "uploads", "batches")
    result.expect(queue_seen <= queue_bound, f"learning queue reached {queue_seen} > its bound {queue_bound}")
    result.expect(dropped > 0, "no upload was dropped: the flood did not exceed the queue")
    result.expect(rejected > 0, "the broken uploads were not refused")
    result.expect(register(), "the cloud no longer answers registrations after the flood")
    growth = rig.rss_mb.get(f"{CLOUD_NS}/cloud_coordinator", 0.0) - rss_before
    result.expect(growth < 400, f"the cloud's memory grew by {growth:.0f} MB under the flood")
    result.repetitions, result.crashes = batches, rig.crashes()
    result.recovered_s.append(t_drained - sent_s)
    result.max_rss_mb = max(rig.rss_mb.values(), default=0.0)
    result.notes = (f"{batches} batches x {frames} frames in {sent_s:.0f} s; learned {learned:.0f}, dropped "
                    f"{dropped:.0f}, refused {rejected:.0f}; queue max {queue_seen}/{queue_bound}; cloud RSS "
                    f"+{growth:.0f} MB; recovered = queue drained after the flood")
    return result


def _garbage_frames(rng: np.random.Generator):
    """Camera messages that cannot be frames: short data, unknown encodings, forged sizes."""
    from sensor_msgs.msg import Image

    yield Image(height=28, width=28, encoding="mono8", step=28, data=bytes(100))
    yield Image(height=28, width=28, encoding="32FC1", step=112, data=bytes(28 * 112))
    yield Image(height=2**31, width=2**31, encoding="rgb8", step=2**32 - 1, data=bytes(64))
    yield Image(height=28, width=28, encoding="mono8", step=28, data=rng.bytes(28 * 28))  # a good one


def edge_flood(rig: Rig, rounds: int = 40, oversized_mb: float = 4.0) -> FaultResult:
    """An edge flooded with updates over its size limit, chunk streams that never complete, updates signed by
    another key and malformed camera frames: each refused with its reason, frames keep being served, the
    edge's memory stays bounded."""
    from ..core.messages import KIND_NORM_AFFINE, ModelUpdate, UpdateHeader
    from ..core.signing import generate_key, load_private_key
    from ..core.tensor_codec import pack
    from ..core.updates import signature_for
    from ..msg import ModelUpdate as ModelUpdateMsg
    from ..ros.ros_io import SENSOR_QOS, UPDATE_QOS, update_to_msg

    from builtin_interfaces.msg import Time
    from rclpy.duration import Duration
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    result = FaultResult("edge flood: oversized updates, chunk storms, malformed frames")
    edge = "robot1"
    proc = rig.start("edge_learner", f"/{edge}", max_update_bytes=1 << 20)
    images = rig.recorder.publisher(Image, f"/{edge}/image", SENSOR_QOS)
    # a flooder picks its own history: deep enough that nothing it sends is overwritten before delivery
    updates = rig.recorder.publisher(ModelUpdateMsg, f"{CLOUD_NS}/updates/{edge}",
                                     QoSProfile(depth=256, reliability=UPDATE_QOS.reliability,
                                                durability=UPDATE_QOS.durability))
    rng = np.random.default_rng(0)

    def feed() -> bool:
        for msg in _garbage_frames(rng):
            images.publish(msg)
        return True
    wait_for(lambda: feed() and rig.version(edge) >= 0, 90, "the edge serving frames")
    rss_before = rig.rss_now(proc)
    cloud_key, other = load_private_key(rig.ring.cloud_private), generate_key()
    big = pack({"w": rng.standard_normal(int(oversized_mb * 2**18)).astype(np.float32)}, compress=False)
    small = pack({"w": np.ones(4, np.float32)})

    def parts(bundle, key, chunks: int) -> list[ModelUpdate]:
        header = UpdateHeader(edge, uuid.uuid4().hex, 100, 0, KIND_NORM_AFFINE, "{}")
        scheme, key_id, sig = signature_for(header, bundle, key)
        header = replace(header, signature_scheme=scheme, key_id=key_id, signature=sig)
        size = -(-len(bundle.payload) // chunks)
        return [ModelUpdate(header, replace(bundle, payload=bundle.payload[j:j + size]), k, chunks)
                for k, j in enumerate(range(0, len(bundle.payload), size))]
    for _ in range(rounds):
        # over the size limit, signed by another key, and a chunk stream whose last chunk never comes
        for i, part in enumerate([*parts(big, cloud_key, 1), *parts(small, other, 1), *parts(big, cloud_key, 64)[:-1]]):
            updates.publish(update_to_msg(part, Time()))
            if i % UPDATE_QOS.depth == 0:  # paced as the cloud paces chunks: the edge keeps the last 4 unread
                updates.wait_for_all_acked(Duration(seconds=30.0))
        feed()
        time.sleep(0.05)
    served = len(rig.predictions(edge))
    wait_for(lambda: feed() and len(rig.predictions(edge)) > served + 10, 60, "frames served after the flood")
    wait_for(lambda: rig.value("edge_learner", "updates", "rejected_updates") >= rounds, 60,
             "the refusals on /diagnostics")
    found = rig.diagnostics("edge_learner", "updates")
    values = found[2] if found else {}
    refused = {k: v for k, v in values.items() if k.startswith("refused/")}
    for kind in ("size", "signature", "chunks"):
        result.expect(f"refused/{kind}" in refused, f"no update refused by the {kind} check: {values}")
    result.expect(rig.value("edge_learner", "camera input", "rejected_images") >= 3 * rounds,
                  "malformed frames were not all refused")
    growth = rig.rss_mb.get(f"/{edge}/edge_learner", 0.0) - rss_before
    result.expect(growth < 600, f"the edge's memory grew by {growth:.0f} MB under the flood")
    result.repetitions, result.crashes = rounds, rig.crashes()
    result.max_rss_mb = max(rig.rss_mb.values(), default=0.0)
    result.notes = (f"{rounds} rounds of a {oversized_mb:g} MB update (limit 1 MB) whole and in 64 chunks "
                    f"missing the last, one signed by another key, 3 malformed frames; refused {refused}; edge "
                    f"RSS +{growth:.0f} MB")
    return result


def _save_loop(state_dir: Path, cache: Path) -> None:
    """A cloud with one registered edge that saves its state as fast as it can until it is killed."""
    from ..core import checkpoint
    from ..core.coordinator import Coordinator
    from ..core.messages import Profile, Registration
    from ..core.strategies import make_strategy
    from ..core.transport import InMemoryNetwork, SimClock

    cloud = Coordinator(make_strategy("eclm_ros", checkpoint.load(default_path("cloud", True, cache))),
                        InMemoryNetwork(SimClock()).cloud_link(), state_dir=state_dir)
    cloud.register(Registration("robot1", Profile(), 0))
    cloud.save()
    (state_dir / "saving").touch()
    while True:
        cloud.save()


def save_kills(out: Path, cache: Path, kills: int, seed: int = 0) -> FaultResult:
    """SIGKILL a process that saves the cloud's state in a tight loop, at random moments, and load what it
    left: write, fsync, rename, fsync of the folder means a kill mid-write leaves the previous file, whole."""
    import torch

    result, rng = FaultResult("SIGKILL of a cloud saving its state in a loop"), random.Random(seed)
    state = out / "state"
    state.mkdir(parents=True, exist_ok=True)
    loads = 0
    for i in range(kills):
        (state / "saving").unlink(missing_ok=True)
        proc = NodeProcess([sys.executable, "-m", "eclm_ros.bench.faults", "save-loop", str(state), str(cache)],
                           out / f"save-loop-{i}.log")
        wait_for(lambda: (state / "saving").exists() or not proc.alive(), 120, "the save loop")
        time.sleep(rng.uniform(0.0, 1.0))
        result.crashes += not proc.alive()
        if proc.alive():
            import psutil

            result.max_rss_mb = max(result.max_rss_mb, psutil.Process(proc.proc.pid).memory_info().rss / 2**20)
        proc.kill()
        try:
            torch.load(state / STATE_FILE, map_location="cpu", weights_only=True)
            loads += 1
        except Exception as exc:
            result.problems.append(f"kill {i}: the state file does not load ({type(exc).__name__}: {exc})")
        result.repetitions += 1
    result.state_loads = f"{loads}/{kills}"
    result.notes = f"kills 0-1 s into the loop; state file {(state / STATE_FILE).stat().st_size / 2**20:.1f} MB"
    return result


SCENARIOS = ("cloud_kills", "edge_kills", "save_kills", "disk_full", "clock_jumps", "upload_flood", "edge_flood")


def run_scenario(name: str, out: Path, cache: Path, repetitions: int, seed: int = 0) -> FaultResult | str:
    """One scenario on fresh processes; a str when it cannot run here (and why)."""
    out = out / name

    def rig(**cloud_params) -> Rig:
        return Rig(out, cache, **cloud_params)

    if name == "disk_full":
        return disk_full(rig, out)
    if name == "save_kills":
        return save_kills(out, cache, repetitions, seed)
    r = rig()
    try:
        run = {"cloud_kills": lambda: cloud_kills(r, repetitions, seed),
                  "edge_kills": lambda: edge_kills(r, repetitions),
                  "clock_jumps": lambda: clock_jumps(r),
                  "upload_flood": lambda: upload_flood(r, batches=repetitions),
                  "edge_flood": lambda: edge_flood(r, rounds=repetitions)}[name]
        try:
            result = run()
        except AssertionError as exc:  # a wait that timed out: the system did not get there
            result = FaultResult(name, crashes=r.crashes(), problems=[str(exc)])
        result.max_rss_mb = max(result.max_rss_mb, *r.rss_mb.values(), 0.0)
        if result.problems:
            (out / "logs.txt").write_text(r.logs())
            result.problems.append(f"node logs: {out / 'logs.txt'}")
        return result
    finally:
        r.close()
        clean_shared_memory()
        os.sync()


# -- the command ----------------------------------------------------------------------------------------------
DEFAULT_REPETITIONS = {"cloud_kills": 10, "edge_kills": 5, "save_kills": 20, "disk_full": 1, "clock_jumps": 1, "upload_flood": 5000,
                       "edge_flood": 40}


def tables(r: dict) -> Tables:
    faults = [[f["fault"], str(f["repetitions"]), str(f["crashes"]), f"{f['max_rss_mb']}", f["state_loads"],
               f["recovered_s"], f["notes"] + ("; PROBLEMS: " + "; ".join(f["problems"]) if f["problems"] else "")]
              for f in r["faults"]]
    fuzzed = [[f["decoder"], f"{f['examples']:,}", f"{f['refused']:,}", f"{f['valid']:,}", str(f["crashes"]),
               f"{f['max_example_ms']}", str(f["peak_rss_mb"]), f["first_crash"] or "-"] for f in r["fuzz"]]
    return [("Faults on the node processes over DDS",
             ["fault", "repetitions", "crashes", "max RSS MB", "state loads", "recovered in s", "notes"], faults),
            (f"Fuzzing (hypothesis, seed {r['seed']}): every decoder that reads network or camera bytes",
             ["decoder", "examples", "refused (own error)", "still valid", "crashes", "slowest ms", "peak RSS MB",
              "first crash"], fuzzed)]


def run(args, console) -> dict:
    """The fuzzing counts, then each fault scenario on fresh node processes."""
    from ..training import trainer
    from .fuzz import TARGETS, Context, fuzz

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    trainer.ensure(quick=True, cache_dir=args.cache)  # quick models: the faults need learning, not accuracy
    cache = args.cache or default_path("cloud", True).parents[1]
    r: dict[str, Any] = {"command": "eclm-ros bench-faults " + " ".join(args.argv), "seed": args.seed,
                         "fuzz": [], "faults": [], "skipped": {}}
    if args.fuzz_examples:
        ctx = Context(default_path("cloud", True, cache), default_path("edge", True, cache))
        ctx.build()
        for name in TARGETS:
            tally = fuzz(TARGETS[name], ctx, args.fuzz_examples, seed=args.seed, strict=False)
            console.print(f"fuzz {name}: {tally.examples} examples, {tally.crashes} crashes")
            r["fuzz"].append({**tally.row(), "what": TARGETS[name].what})
    for name in args.faults:
        reps = args.repetitions or DEFAULT_REPETITIONS[name]
        console.print(f"fault {name} x {reps} ...")
        result = run_scenario(name, args.out, cache, reps, args.seed)
        if isinstance(result, str):
            r["skipped"][name] = result
            console.print(f"[yellow]skipped {name}:[/] {result}")
        else:
            r["faults"].append(result.row())
    return r


def to_markdown(r: dict) -> str:
    lines = ["# eclm-ros bench-faults", "", f"Command: `{r['command']}`  ", f"{os.cpu_count()} CPUs (shared)", ""]
    lines += [f"Skipped {k}: {v}  " for k, v in r["skipped"].items()]
    return "\n".join(lines + markdown_tables(tables(r)))


def cli(argv: list[str]) -> int:
    import argparse
    import json

    from rich.console import Console

    parser = argparse.ArgumentParser(prog="eclm-ros bench-faults", description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz-examples", type=int, default=20000, help="hypothesis examples per decoder (0: none)")
    parser.add_argument("--faults", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run ('' for none; default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--repetitions", type=int, default=0, help="repetitions of every scenario (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPETITIONS.items()) + ")")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache (quick models are trained there)")
    parser.add_argument("--out", type=Path, required=True, help="writes DIR/results.json, DIR/results.md, logs")
    args = parser.parse_args(argv)
    args.argv = argv
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(args.faults) - set(SCENARIOS))
    if unknown or args.fuzz_examples < 0 or args.repetitions < 0:
        parser.error(f"unknown scenarios {unknown} (known: {', '.join(SCENARIOS)})" if unknown
                     else "--fuzz-examples and --repetitions must be >= 0")
    console = Console() if Console().is_terminal else Console(width=200)
    r = run(args, console)
    print_tables(tables(r), console)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(r, indent=2))
    (args.out / "results.md").write_text(to_markdown(r))
    console.print(f"wrote {args.out}/results.json, results.md")
    bad = sum(f["crashes"] for f in r["fuzz"]) + sum(f["crashes"] + len(f["problems"]) for f in r["faults"])
    return 1 if bad else 0


if __name__ == "__main__" and sys.argv[1:2] == ["save-loop"]:  # save_kills' child process
    _save_loop(Path(sys.argv[2]), Path(sys.argv[3]))
