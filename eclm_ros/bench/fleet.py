"""`eclm-ros bench-fleet`: one cloud, a growing fleet. Per fleet size: the cloud's CPU seconds per uploaded and
per learned frame, its memory per edge, upload-to-update latency, updates per edge per minute and accuracy per
edge; with edge processes over DDS (``--edges``) and with simulated edges over the in-memory transport
(``--sim-edges``), the very Coordinator and EdgeAgent objects the nodes run.

The fleet is mixed: robot i is ``KINDS[i % 4]`` (two forward-only robots of the small budget, one of the tiny
budget, one trainable), in one of four environment groups, each its own sequence of corruptions. Every camera
runs at ``--fps``, every edge uploads at most a fifth of its frames. ``--ray-workers N`` runs the cloud's
learning on N Ray workers.

Simulated fleets run on a simulated clock: each robot's edge compute is free (it is a robot of its own), the
cloud's work is charged its measured CPU time on its lanes (one, or one per Ray worker), so latencies and
update rates are those of a cloud as fast as this machine. Memory per edge in a simulation is what the
cloud's strategy holds per edge (its affine vectors and frames; with Ray, the workers' RSS growth per edge);
the process itself also holds the simulated robots' ONNX Runtime sessions. Over DDS it is the cloud process's
RSS growth (with its Ray workers) per edge.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import Checkpoint, default_path, load
from ..core.coordinator import Coordinator
from ..core.edge_agent import EdgeAgent, EdgeConfig
from ..core.edge_runtime import make_runtime
from ..core.messages import Profile
from ..core.strategies import BUDGET_SHARES, default_budget, make_strategy
from ..core.transport import InMemoryNetwork, LinkModel, SimClock
from ..sim.data import load_fashion_mnist
from ..sim.world import WorldStream, parse_schedule
from .report import Tables, markdown_tables, print_tables

KINDS = ("small", "small", "tiny", "trainable")  # robot i is KINDS[i % 4]; "trainable" has the small budget
ENVIRONMENTS = ("fog", "contrast", "gaussian_noise", "motion_blur", "brightness", "pixelate")
GROUPS = 4  # environment groups: group g sees ENVIRONMENTS[g], [g + 1], [g + 2] in turn
UPLOAD_RATIO, UPLOAD_BATCH = 0.2, 16
SIM_LINK = LinkModel(rate_bps=20e6, latency_s=0.01)  # each direction of a simulated robot's link
CLOUD_STEP_S = 0.005  # resolution of the simulated cloud's clock
MERGE_PERIOD_S = 30.0  # the node's default merge_period_s
VARIANTS = 4  # image orders per environment group in a simulation (robots of a group see different frames)


@dataclass(frozen=True)
class Robot:
    """One robot of the fleet: its name (and namespace), budget, environment group and camera schedule."""

    index: int

    @property
    def name(self) -> str:
        return f"robot{self.index + 1}"

    @property
    def kind(self) -> str:
        return KINDS[self.index % len(KINDS)]

    @property
    def group(self) -> int:
        return (self.index + self.index // GROUPS) % GROUPS  # kinds and groups mix

    def phase(self, frames: int) -> int:
        """Where in its group's stream the robot's camera starts: robots are not in step with each other (in
        step, a group's robots would select and upload the same frames at the same moments)."""
        return self.index * 7919 % max(frames, 1)

    def schedule(self, frames: int, severity: int) -> str:
        """Three environments of ``frames`` / 3 frames each, repeating."""
        segment = max(frames // 3, 1)
        return ",".join(f"{ENVIRONMENTS[(self.group + k) % len(ENVIRONMENTS)]}@{severity}:{segment}"
                        for k in range(3)) + "*"

    def profile(self, cloud: torch.nn.Module) -> Profile:
        budget = default_budget(cloud, BUDGET_SHARES["tiny" if self.kind == "tiny" else "small"])
        return Profile(trainable=self.kind == "trainable", max_macs=budget.max_macs, device=self.kind)


def fleet(n: int) -> list[Robot]:
    return [Robot(i) for i in range(n)]


def _summary(mode: str, n: int, seconds: float, counts: dict, cpu_s: float, mb_per_edge: float, latency_s: list,
             applied: np.ndarray, accuracy: dict[str, float], robots: list[Robot], extra: dict) -> dict:
    """One fleet size's row (every figure per edge or per frame, so sizes compare)."""
    acc = np.array([accuracy[r.name] for r in robots])
    lat = np.asarray(latency_s, dtype=np.float64) * 1000
    by_kind = {k: float(np.mean([accuracy[r.name] for r in robots if r.kind == k]))
               for k in dict.fromkeys(KINDS) if any(r.kind == k for r in robots)}
    return {"mode": mode, "edges": n, "seconds": round(seconds, 1), **counts, "cloud_cpu_s": round(cpu_s, 2),
            "cpu_ms_per_uploaded_frame": 1000 * cpu_s / max(counts["uploaded_frames"], 1),
            "cpu_ms_per_learned_frame": 1000 * cpu_s / max(counts["learned_frames"], 1),
            "mb_per_edge": mb_per_edge,
            "latency_p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "latency_p95_ms": float(np.percentile(lat, 95)) if len(lat) else float("nan"),
            "updates_per_edge_per_min": float(applied.mean() * 60 / max(seconds, 1e-9)),
            "accuracy_mean": float(acc.mean()), "accuracy_min": float(acc.min()), "accuracy_max": float(acc.max()),
            "accuracy_by_kind": by_kind, **extra}


# -- simulated fleets (in memory) -------------------------------------------------------------------------------
class HeldLink:
    """The simulated cloud's link: updates a learning job sends leave when the job would have finished (its CPU
    time after it started); registrations' updates leave at once."""

    def __init__(self, link) -> None:
        self.link = link
        self.local = threading.local()
        self.due: list = []  # heap of (time, order, edge id, parts)
        self.order = itertools.count()

    def send_update(self, edge_id: str, parts: list) -> None:
        held = getattr(self.local, "held", None)
        if held is None:
            self.link.send_update(edge_id, parts)
        else:
            held.append((edge_id, parts))

    def hold(self) -> None:
        self.local.held = []

    def release_at(self, t: float) -> None:
        for edge_id, parts in self.local.held:
            heapq.heappush(self.due, (t, next(self.order), edge_id, parts))
        self.local.held = None

    def flush(self, now: float) -> None:
        while self.due and self.due[0][0] <= now:
            _, _, edge_id, parts = heapq.heappop(self.due)
            self.link.send_update(edge_id, parts)


class TimedCloud:
    """The coordinator as the network reaches it, with the CPU its message handling (admission, registration)
    costs."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator, self.cpu_s = coordinator, 0.0

    def _timed(self, method: str, *args):
        t = time.thread_time()
        try:
            return getattr(self.coordinator, method)(*args)
        finally:
            self.cpu_s += time.thread_time() - t

    def register(self, request):
        return self._timed("register", request)

    def on_samples(self, batch):
        return self._timed("on_samples", batch)

    def on_modules(self, msg):
        return self._timed("on_modules", msg)

    def on_status(self, status):
        return self._timed("on_status", status)


def _held_mb_per_edge(strategy) -> float:
    """What a local strategy holds per edge: its affine vectors, momentum and frames (replay, pending, the recent
    and held-out uploads; a batch shared by several of those counted once)."""
    total = 0
    for session in strategy.sessions.values():
        total += session.learner.nbytes
        bases = {}
        for view in itertools.chain(session.recent, session.holdout):
            base = view.base if view.base is not None else view
            bases[id(base)] = base.nbytes
        total += sum(bases.values())
    return total / max(len(strategy.sessions), 1) / 2**20


def _rss_mb(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _frames(robots: list[Robot], frames: int, severity: int, world: str) -> dict[tuple[int, int], tuple]:
    """Per (environment group, variant), the camera's frames and labels for the whole run."""
    images, labels = load_fashion_mnist("test")
    out = {}
    for group, variant in sorted({(r.group, (r.index // GROUPS) % VARIANTS) for r in robots}):
        stream = WorldStream(images, labels, parse_schedule(next(r for r in robots if r.group == group)
                                                             .schedule(frames, severity)),
                             seed=group * 100 + variant, world=world)
        pairs = [stream.frame(t) for t in range(frames)]
        out[group, variant] = (np.stack([f.image for f, _ in pairs]), np.array([t.label for _, t in pairs]))
    return out


def simulate(n: int, cloud: Checkpoint, edge: Checkpoint, args, console) -> dict:
    """``n`` simulated robots and the cloud on one simulated clock for ``args.seconds``."""
    clock = SimClock()
    net = InMemoryNetwork(clock, seed=args.seed)
    link = HeldLink(net.cloud_link())
    quiet = logging.getLogger("eclm_ros.bench.fleet")
    quiet.setLevel(logging.ERROR)
    strategy = make_strategy("eclm_ros", cloud, seed=args.seed, ray_workers=args.ray_workers)
    coordinator = Coordinator(strategy, link, clock=clock, log=quiet)
    front = TimedCloud(coordinator)
    net.serve(front)
    robots = fleet(n)
    total = int(args.fps * args.seconds)
    frames = _frames(robots, total, args.severity, args.world)
    agents = []
    for r in robots:
        agent = EdgeAgent(make_runtime("onnx", edge.model, input_shape=edge.description.input_shape()),
                          edge.description, net.connect(r.name, SIM_LINK, SIM_LINK),
                          EdgeConfig(edge_id=r.name, upload_ratio=UPLOAD_RATIO, upload_batch=UPLOAD_BATCH,
                                     profile=r.profile(cloud.model)), clock=clock, log=quiet, threaded=False)
        net.attach(r.name, agent)
        agents.append(agent)
    workers = list(getattr(strategy, "pids", []))
    workers_mb = _rss_mb(workers)
    lanes = strategy.lanes
    free_at = [0.0] * lanes
    lane_cpu = [0.0] * lanes
    pool = ThreadPoolExecutor(lanes) if lanes > 1 else None

    def job(lane: int) -> tuple[int, float]:
        link.hold()
        remote = strategy.cpu_s[lane] if workers else 0.0
        t = time.thread_time()
        ran = coordinator.process(max_jobs=1, lane=lane)
        cpu = time.thread_time() - t + ((strategy.cpu_s[lane] - remote) if workers else 0.0)
        link.release_at(clock() + cpu)
        return ran, cpu

    correct, seen = np.zeros(n), np.zeros(n)
    next_frame, next_merge, frame, t0 = 0.0, MERGE_PERIOD_S, 0, time.perf_counter()
    while frame < total:
        if clock() >= next_frame - 1e-9:
            for i, (r, agent) in enumerate(zip(robots, agents)):
                images, labels = frames[r.group, (r.index // GROUPS) % VARIANTS]
                t = (frame + r.phase(total)) % total
                pred = agent.on_frame(images[t])
                agent.tick()
                correct[i] += pred is not None and pred.class_id == labels[t]
                seen[i] += 1
            frame += 1
            next_frame = frame / args.fps
            if frame % int(10 * args.fps) == 0:
                console.print(f"  {clock():.0f} of {args.seconds:.0f} simulated s: {coordinator.counters['learned_frames']} "
                              f"frames learned, {coordinator.counters['dropped_batches']} batches dropped, "
                              f"{time.perf_counter() - t0:.0f} s")
        if clock() >= next_merge:
            coordinator.merge_round()
            next_merge += MERGE_PERIOD_S
        net.deliver()
        link.flush(clock())
        ready = [lane for lane in range(lanes) if free_at[lane] <= clock()]
        done = list(pool.map(job, ready)) if pool and len(ready) > 1 else [job(lane) for lane in ready]
        for lane, (ran, cpu) in zip(ready, done):
            if ran:
                free_at[lane] = clock() + cpu
                lane_cpu[lane] += cpu
        net.deliver()
        link.flush(clock())
        clock.advance(CLOUD_STEP_S)
    wall = time.perf_counter() - t0
    c = coordinator.counters
    counts = {"uploaded_frames": int(sum(a.counters["uploaded"] for a in agents)), "learned_frames": int(c["learned_frames"]),
              "dropped_batches": int(c["dropped_batches"]), "rounds": int(c["rounds"])}
    mb = (_rss_mb(workers) - workers_mb) / n if workers else _held_mb_per_edge(strategy)
    result = _summary("sim", n, args.seconds, counts, sum(lane_cpu) + front.cpu_s, mb,
                      [x for a in agents for x in a.update_latencies],
                      np.array([max(a.counters["applied"] - 1, 0) for a in agents]),
                      {r.name: correct[i] / max(seen[i], 1) for i, r in enumerate(robots)}, robots,
                      {"ray_workers": args.ray_workers, "learning_cpu_s": round(sum(lane_cpu), 2),
                       "admission_cpu_s": round(front.cpu_s, 2),
                       "lane_busy": [round(x / args.seconds, 3) for x in lane_cpu], "wall_s": round(wall, 1)})
    if pool:
        pool.shutdown()
    strategy.close()
    console.print(f"sim {n} edges: {result['cpu_ms_per_learned_frame']:.2f} ms CPU per learned frame, "
                  f"{result['mb_per_edge']:.2f} MB per edge, {wall:.0f} s")
    return result


# -- edge processes over DDS ----------------------------------------------------------------------------------
def over_dds(n: int, cache: Path | None, args, console) -> dict:
    """The cloud node and ``n`` robots (a camera_stream and an edge_learner each) as processes; measured over
    ``args.seconds`` once every edge serves the cloud's model."""
    import psutil

    from ..ros.launcher import clean_shared_memory, wait_for
    from .rig import Rig

    cloud_ckpt = load(default_path("cloud", args.quick, cache))
    rig = Rig(args.out / f"dds-{n}", cache, robots=n, quick=args.quick, truth=True, save_period_s=86400.0,
              ray_workers=args.ray_workers)
    robots = fleet(n)
    try:
        rig.params["edge_learner"].update(upload_ratio=UPLOAD_RATIO, upload_batch=UPLOAD_BATCH, register_period_s=5.0)
        cloud = rig.start("cloud_coordinator", "/eclm")
        wait_for(lambda: rig.diagnostics("cloud_coordinator", "edges"), 600, "the cloud serving")
        tree = psutil.Process(cloud.proc.pid)

        def cloud_pids() -> list[int]:
            return [tree.pid, *(p.pid for p in tree.children(recursive=True))]

        def cloud_cpu() -> float:
            total = 0.0
            for pid in cloud_pids():
                try:
                    times = psutil.Process(pid).cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
            return total

        rss0 = _rss_mb(cloud_pids())
        total = int(args.fps * args.seconds)
        for r in robots:
            p = r.profile(cloud_ckpt.model)
            rig.start("edge_learner", f"/{r.name}", max_macs=p.max_macs, device=p.device,
                      adapt_locally=p.trainable)
            rig.start("camera_stream", f"/{r.name}", schedule=r.schedule(total, args.severity), world=args.world,
                      seed=r.index, rate_hz=args.fps)
        wait_for(lambda: all(rig.version(r.name) >= 1 for r in robots), 900, "every edge serving the cloud's model")

        def edge_values(r: Robot, concern: str) -> dict[str, str]:
            found = rig.diagnostics("edge_learner", concern, f"/{r.name}")
            return found[2] if found else {}

        def snapshot() -> dict:
            return {"cpu": cloud_cpu(), "time": time.time_ns(), "rss": _rss_mb(cloud_pids()),
                    "cloud": rig.diagnostics("cloud_coordinator", "uploads")[2],
                    "applied": np.array([float(edge_values(r, "updates").get("applied", 0)) for r in robots]),
                    "uploaded": sum(float(edge_values(r, "uploads").get("uploaded", 0)) for r in robots)}

        before = snapshot()
        time.sleep(args.seconds)
        after = snapshot()
        seconds = (after["time"] - before["time"]) / 1e9
        accuracy = {r.name: _accuracy(rig, r.name, before["time"], after["time"]) for r in robots}
        latency = [(float(edge_values(r, "updates").get("upload_to_update_p50_ms", "nan")),
                    float(edge_values(r, "updates").get("upload_to_update_p95_ms", "nan"))) for r in robots]
        crashed = rig.crashes()
    finally:
        rig.close()
        clean_shared_memory()
    grew = lambda key: float(after["cloud"][key]) - float(before["cloud"][key])  # noqa: E731
    counts = {"uploaded_frames": int(after["uploaded"] - before["uploaded"]), "learned_frames": int(grew("learned_frames")),
              "dropped_batches": int(grew("dropped_batches")), "rounds": None}
    timed = [(p50, p95) for p50, p95 in latency if p50 > 0]
    result = _summary("dds", n, seconds, counts, after["cpu"] - before["cpu"], (after["rss"] - rss0) / n, [],
                      after["applied"] - before["applied"], accuracy, robots,
                      {"ray_workers": args.ray_workers, "crashed_processes": crashed})
    result["latency_p50_ms"] = float(np.median([p for p, _ in timed])) if timed else float("nan")
    result["latency_p95_ms"] = float(np.median([p for _, p in timed])) if timed else float("nan")
    console.print(f"dds {n} edges: {result['cpu_ms_per_learned_frame']:.2f} ms CPU per learned frame, "
                  f"{result['mb_per_edge']:.2f} MB per edge")
    return result


def _accuracy(rig, robot: str, start_ns: int, end_ns: int) -> float:
    """Share of the robot's predictions received in [start, end] whose class is its camera's ground truth (joined
    by the frame's stamp)."""
    truth = {(m.header.stamp.sec, m.header.stamp.nanosec): m.class_id for m in rig.recorder.received[f"/{robot}/ground_truth"]}
    hits = [truth[key] == p.class_id for t, p in rig.recorder.timed(f"/{robot}/predictions")
            if start_ns <= t <= end_ns and (key := (p.header.stamp.sec, p.header.stamp.nanosec)) in truth]
    return float(np.mean(hits)) if hits else float("nan")


# -- the report -----------------------------------------------------------------------------------------------
def flatness(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per mode, cost per edge at the largest fleet over the smallest: CPU per learned frame and memory per edge
    (1.0 = flat)."""
    out = {}
    for mode in ("dds", "sim"):
        own = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["edges"])
        if len(own) > 1:
            small, large = own[0], own[-1]
            out[mode] = {"from": small["edges"], "to": large["edges"],
                         **{key: large[key] / small[key] if small[key] else float("nan")
                            for key in ("cpu_ms_per_learned_frame", "cpu_ms_per_uploaded_frame", "mb_per_edge")}}
    return out


def tables(r: dict) -> Tables:
    rows = []
    for x in r["rows"]:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in x["accuracy_by_kind"].items())
        rows.append([f"{x['edges']} {'processes' if x['mode'] == 'dds' else 'simulated'}",
                     f"{x['cpu_ms_per_uploaded_frame']:.2f}", f"{x['cpu_ms_per_learned_frame']:.2f}",
                     f"{x['learned_frames']}/{x['uploaded_frames']}", f"{x['mb_per_edge']:.2f}",
                     f"{x['latency_p50_ms']:.0f} / {x['latency_p95_ms']:.0f}", f"{x['updates_per_edge_per_min']:.1f}",
                     f"{x['accuracy_mean']:.3f} ({x['accuracy_min']:.3f}-{x['accuracy_max']:.3f})", kinds])
    flat = [[mode, f"{f['from']} -> {f['to']}", f"{f['cpu_ms_per_learned_frame']:.2f}",
             f"{f['cpu_ms_per_uploaded_frame']:.2f}", f"{f['mb_per_edge']:.2f}"] for mode, f in r["flatness"].items()]
    return [("One cloud, N edges (mixed fleet: small, small, tiny, trainable)",
             ["edges", "cloud CPU ms / uploaded frame", "/ learned frame", "learned / uploaded frames",
              "cloud MB / edge", "upload->update p50 / p95 ms", "updates / edge / min", "accuracy mean (min-max)",
              "accuracy by kind"], rows),
            ("Flatness: cost per edge at the largest N / at the smallest (1.0 = flat)",
             ["mode", "N", "CPU / learned frame", "CPU / uploaded frame", "MB / edge"], flat)]


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [("cpu_ms_per_learned_frame", "cloud CPU ms per learned frame"), ("mb_per_edge", "cloud MB per edge"),
               ("latency_p50_ms", "upload -> update p50 ms"), ("updates_per_edge_per_min", "updates / edge / min"),
               ("accuracy_mean", "accuracy per edge (mean)")]
    fig, axes = plt.subplots(1, len(figures), figsize=(4 * len(figures), 3.4))
    for ax, (key, title) in zip(axes, figures):
        for mode, marker in (("dds", "o-"), ("sim", "s--")):
            own = sorted((x for x in r["rows"] if x["mode"] == mode), key=lambda x: x["edges"])
            if own:
                ax.plot([x["edges"] for x in own], [x[key] for x in own], marker,
                        label="processes (DDS)" if mode == "dds" else "simulated (in memory)")
        ax.set_xscale("log")
        ax.set_xlabel("edges")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(r: dict) -> str:
    lines = ["# eclm-ros bench-fleet", "", f"Command: `{r['command']}`  ",
             f"{os.cpu_count()} CPUs (shared); models: {r['models']}; {r['seconds']:.0f} s per fleet size, cameras "
             f"at {r['fps']:g} Hz, {r['world']} world severity {r['severity']}; learning on "
             f"{r['ray_workers'] or 'no'} Ray workers", ""]
    return "\n".join(lines + markdown_tables(tables(r)))


def run(args, console) -> dict:
    from ..training import trainer

    if args.quick:
        trainer.ensure(quick=True, cache_dir=args.cache)
    cloud, edge = (load(default_path(name, args.quick, args.cache)) for name in ("cloud", "edge"))
    torch.set_num_threads(1)
    r = {"command": "eclm-ros bench-fleet " + " ".join(args.argv), "models": "quick" if args.quick else "full",
         "seconds": args.seconds, "fps": args.fps, "world": args.world, "severity": args.severity,
         "ray_workers": args.ray_workers, "rows": []}
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    cache = args.cache or (default_path("cloud", True).parents[1] if args.quick else None)  # the nodes' models
    for n in args.edges:
        console.print(f"{n} edge processes over DDS ...")
        r["rows"].append(over_dds(n, cache, args, console))
    for n in args.sim_edges:
        console.print(f"{n} simulated edges ...")
        r["rows"].append(simulate(n, cloud, edge, args, console))
    r["flatness"] = flatness(r["rows"])
    return r


def _sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def cli(argv: list[str]) -> int:
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="eclm-ros bench-fleet", description=__doc__.split("\n")[0])
    parser.add_argument("--edges", default="1,4,16", help="fleet sizes run as edge processes over DDS, "
                        "comma-separated ('' for none)")
    parser.add_argument("--sim-edges", default="100,1000", help="fleet sizes simulated over the in-memory "
                        "transport, comma-separated ('' for none)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per fleet size")
    parser.add_argument("--fps", type=float, default=10.0, help="every robot's camera rate")
    parser.add_argument("--ray-workers", type=int, default=0, help="the cloud's learning on this many Ray workers")
    parser.add_argument("--quick", action="store_true", help="quick models (a simulated edge with the full "
                        "small sub-model holds a 25 MB ONNX Runtime session: 1,000 of them do not fit here)")
    parser.add_argument("--world", default="harsh", choices=("mild", "harsh"))
    parser.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="checkpoint cache")
    parser.add_argument("--out", type=Path, required=True, help="writes DIR/results.json, results.md, fleet.png")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        args.edges, args.sim_edges = _sizes(args.edges), _sizes(args.sim_edges)
    except ValueError:
        parser.error("--edges and --sim-edges take comma-separated integers")
    if any(n < 1 for n in args.edges + args.sim_edges) or args.seconds <= 0 or args.fps <= 0 or args.ray_workers < 0:
        parser.error("fleet sizes, --seconds and --fps must be positive, --ray-workers >= 0")
    console = Console() if Console().is_terminal else Console(width=200)
    args.out.mkdir(parents=True, exist_ok=True)
    r = run(args, console)
    print_tables(tables(r), console)
    (args.out / "results.json").write_text(json.dumps(r, indent=2))
    (args.out / "results.md").write_text(to_markdown(r))
    plot(r, args.out / "fleet.png")
    console.print(f"wrote {args.out}/results.json, results.md, fleet.png")
    return 0
