"""`eclm-ros bench-link`: the whole system on a real link, shaped through a schedule and cut.

The cloud coordinator runs in one network namespace; the edge learner, its bandwidth monitor and camera in
another; DDS crosses a veth pair between them (``netns.ShapedLink``, UDP only) that ``tc tbf`` shapes through
the schedule (default 50 Mbit/s, 2 Mbit/s, 256 kbit/s, 30 s cut, 50 Mbit/s). Per phase: the shaped rate, the
monitor's estimates (median once settled, error, time to the first within +-25 % and the share of later ones
within), uploads against their budget, the encodings of the updates the cloud sent, updates applied and
refused, the upload queue against its bound, accuracy (the edge's predictions against the camera's ground
truth, beside the source model on the same frames); and across the run: every applied version in order, none
twice. DIR/results.json and DIR/results.md; the nodes' logs and the recorders' raw records stay in DIR.

    eclm-ros bench-link --out DIR [--schedule 50M:60,2M:60,256k:90,down:30,50M:60] [--quick]

Needs root (namespaces); a recorder runs in each namespace (``python -m eclm_ros.bench.link record SIDE FILE``)
and subscribes only to what is local there, so recording adds nothing to the link: on the edge side the
monitor's estimates, predictions, ground truth, the edge's status and its uploads; on the cloud side the updates
it sends (their encodings).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from ..core import checkpoint
from ..core.preprocess import Preprocessor
from ..core.signing import KeyRing
from ..ros.launcher import NodeProcess, node_executable, wait_for
from ..ros.params import EDGE_LEARNER
from ..sim.data import load_fashion_mnist
from ..sim.world import WorldStream
from ..sim.world import parse_schedule as world_schedule
from ..training import trainer
from . import netns

EDGE_ID = "robot1"
SCHEDULE = "50M:60,2M:60,256k:90,down:30,50M:60"
CAMERA_SCHEDULE = ("clean:450,fog@3:900,contrast@3:900,gaussian_noise@3:900,motion_blur@3:900,brightness@3:900,"
                   "pixelate@3:900,frost@3:900*")  # the demo's harsh stream, repeated
TOLERANCE = 0.25  # an estimate within +-25 % of the shaped rate counts as settled
# The default model's affine update is ~5.2 KB at fp16, which the default 1 s deadline carries even at 256 kbit/s;
# 5 ms makes the cloud shrink it to int8 below ~8 Mbit/s, so the run shows the encoding following the link.
UPDATE_DEADLINE_S = 0.005
APPLIED = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*edge_learner\]: applied (\w+) update, now serving version (\d+)")
REJECTED = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*edge_learner\]: rejected (?!image)")
EVENT = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*edge_learner\]: (cloud unreachable|link back)")


@dataclass(frozen=True)
class Phase:
    rate_bps: float | None  # None: the link is cut
    seconds: float

    @property
    def name(self) -> str:
        return "down" if self.rate_bps is None else rate_text(self.rate_bps)


def rate_text(bps: float) -> str:
    return f"{bps / 1e6:.3g} Mbit/s" if bps >= 1e6 else f"{bps / 1e3:.3g} kbit/s"


def parse_schedule(text: str) -> list[Phase]:
    """'50M:60,2M:60,256k:90,down:30,50M:60' -> phases (rate in bit/s with k/M/G, or down; seconds)."""
    phases = []
    for item in text.split(","):
        rate, _, seconds = item.strip().partition(":")
        try:
            duration = float(seconds)
            value = None if rate == "down" else float(rate.rstrip("kMG")) * {"k": 1e3, "M": 1e6, "G": 1e9}.get(
                rate[-1:], 1.0)
        except ValueError:
            raise ValueError(f"schedule item {item!r}: give RATE:SECONDS, e.g. 2M:60, 256k:90 or down:30") from None
        if duration <= 0 or (value is not None and value <= 0):
            raise ValueError(f"schedule item {item!r}: rate and seconds must be > 0")
        phases.append(Phase(value, duration))
    if not phases or phases[0].rate_bps is None:
        raise ValueError("the schedule must start with a rate (the link comes up shaped)")
    return phases


# -- the recorders (one per namespace) ------------------------------------------------------------------------
def record(side: str, path: Path) -> None:
    """Write what is published locally on ``side`` to ``path`` as JSON lines until SIGINT/SIGTERM."""
    import rclpy
    from rclpy.executors import ExternalShutdownException

    from ..msg import BandwidthEstimate, EdgeStatus, GroundTruth, ModelUpdate, Prediction, SampleBatch
    from ..ros.links import updates_topic
    from ..ros.ros_io import RELIABLE_QOS, UPDATE_QOS

    rclpy.init()
    node = rclpy.create_node(f"eclm_link_recorder_{side}")
    out = open(path, "a", buffering=1)

    def sub(msg_type, topic: str, qos, fields: Callable) -> None:
        node.create_subscription(msg_type, topic, lambda msg: out.write(json.dumps(
            {"topic": topic.rsplit("/", 1)[-1], "t": time.time(), **fields(msg)}) + "\n"), qos)

    def stamp(header) -> list[int]:
        return [header.stamp.sec, header.stamp.nanosec]

    if side == netns.EDGE:
        sub(BandwidthEstimate, f"/{EDGE_ID}/bandwidth", RELIABLE_QOS, lambda m: {
            "up": m.uplink_bps, "down": m.downlink_bps, "rtt_ms": m.rtt_ms, "link_up": m.link_up,
            "budget": m.upload_budget_bps})
        sub(Prediction, f"/{EDGE_ID}/predictions", RELIABLE_QOS, lambda m: {
            "stamp": stamp(m.header), "cls": m.class_id, "version": m.model_version})
        sub(GroundTruth, f"/{EDGE_ID}/ground_truth", RELIABLE_QOS, lambda m: {
            "stamp": stamp(m.header), "cls": m.class_id, "frame": m.frame_index})
        sub(SampleBatch, "/eclm/samples", RELIABLE_QOS, lambda m: {
            "edge": m.edge_id, "frames": len(m.frames), "bytes": sum(len(f.data) for f in m.frames)})
        sub(EdgeStatus, "/eclm/edge_status", RELIABLE_QOS, lambda m: {
            "queue": m.upload_queue, "version": m.model_version, "applied": m.updates_applied,
            "rejected": m.updates_rejected})
    else:
        sub(ModelUpdate, updates_topic("/eclm", EDGE_ID), UPDATE_QOS, lambda m: {
            "version": m.version, "kind": m.kind, "bytes": len(m.bundle.payload),
            "encoding": next((s.encoding for s in m.bundle.tensors if s.dtype.startswith("float")), "raw")})
    signal.signal(signal.SIGTERM, lambda *_: rclpy.try_shutdown())
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        out.close()
        rclpy.try_shutdown()


# -- the run ----------------------------------------------------------------------------------------------------
NODES = (("cloud_coordinator", "/eclm", netns.CLOUD), ("edge_learner", f"/{EDGE_ID}", netns.EDGE),
         ("bandwidth_monitor", f"/{EDGE_ID}", netns.EDGE), ("camera_stream", f"/{EDGE_ID}", netns.EDGE))


class LinkRun:
    """The four node processes and a recorder in each namespace of ``link``; ``play`` walks the schedule."""

    def __init__(self, link: netns.ShapedLink, out: Path, *, quick: bool = False, cache: Path | None = None,
                 params: dict[str, dict] | None = None) -> None:
        self.link, self.out = link, Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        keys = KeyRing(self.out / "keys")
        keys.init_cloud()
        keys.enrol(EDGE_ID)
        model = {"cloud_coordinator": "cloud", "edge_learner": "edge"}
        self.params = {name: {**({"model_path": str(checkpoint.default_path(model[name], quick, cache))}
                                 if name in model else {}),
                              **({"keys_dir": str(keys.root)} if name in model else {})} for name, _, _ in NODES}
        self.params["cloud_coordinator"]["update_deadline_s"] = UPDATE_DEADLINE_S
        self.params["camera_stream"].update(schedule=CAMERA_SCHEDULE, world="harsh", seed=0)
        for name, values in (params or {}).items():
            self.params[name].update(values)
        self.env = {"ROS_DOMAIN_ID": str(random.SystemRandom().randint(1, 100)),
                    "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET",
                    "FASTDDS_DEFAULT_PROFILES_FILE": str(netns.fastdds_profile())}
        self.procs: dict[str, NodeProcess] = {}
        self.files = {side: self.out / f"records-{side}.jsonl" for side in (netns.CLOUD, netns.EDGE)}

    def _start(self, name: str, side: str, argv: list[str]) -> None:
        self.procs[name] = NodeProcess(self.link.command(side, argv), self.out / f"{name}.log", self.env)

    def start(self) -> None:
        """Recorders first (so nothing published is missed), then the cloud, the edge, its monitor and camera."""
        for side, path in self.files.items():
            path.unlink(missing_ok=True)
            self._start(f"recorder-{side}", side, [sys.executable, "-m", "eclm_ros.bench.link", "record", side,
                                                     str(path)])
        for name, namespace, side in NODES:
            params = self.out / f"{name}.yaml"
            params.write_text(yaml.safe_dump({f"/**/{name}": {"ros__parameters": self.params[name]}}))
            self._start(name, side, [*node_executable(name), "--ros-args", "-r", f"__ns:={namespace}",
                                     "--params-file", str(params)])

    def alive(self) -> list[str]:
        return [name for name, p in self.procs.items() if not p.alive()]

    def wait_serving(self, timeout: float = 180.0) -> None:
        """Until the edge serves a model from the cloud and the monitor has measured the link."""
        def ready() -> bool:
            dead = self.alive()
            if dead:
                raise RuntimeError(f"ended early: {dead}; logs in {self.out}\n{self.logs()}")
            rec = self.records()
            return (any(p["version"] >= 1 for p in rec["predictions"]) and
                    any(b["up"] > 0 and b["down"] > 0 for b in rec["bandwidth"]))
        wait_for(ready, timeout, "the edge serving the cloud's model and the link measured", interval=1.0)

    def play(self, phases: list[Phase], progress: Callable[[Phase, int], None] | None = None) -> list[dict]:
        """Shape or cut the link phase by phase; each phase's start and end (wall clock, as the logs)."""
        marks, down = [], False
        for i, phase in enumerate(phases):
            if phase.rate_bps is None:
                self.link.cut()
            else:
                self.link.shape(phase.rate_bps)
                if down:
                    self.link.restore()
            down = phase.rate_bps is None
            if progress:
                progress(phase, i)
            start = time.time()
            while time.time() - start < phase.seconds:
                time.sleep(0.5)
                dead = self.alive()
                if dead:
                    raise RuntimeError(f"ended during {phase.name}: {dead}; logs in {self.out}\n{self.logs()}")
            marks.append({"phase": phase.name, "rate_bps": phase.rate_bps, "start": start, "end": time.time()})
        return marks

    def records(self) -> dict[str, list[dict]]:
        rec: dict[str, list[dict]] = {k: [] for k in ("bandwidth", "predictions", "ground_truth", "samples",
                                                      "edge_status", EDGE_ID)}
        for path in self.files.values():
            if path.exists():
                for line in path.read_text().splitlines():
                    try:
                        item = json.loads(line)
                    except json.JSONDecodeError:  # a line being written
                        continue
                    rec.setdefault(item["topic"], []).append(item)
        rec["updates"] = rec.pop(EDGE_ID)
        return rec

    def queue_bound(self) -> int:
        """The edge's max_queued_batches as this run set it."""
        default = next(p.default for p in EDGE_LEARNER if p.name == "max_queued_batches")
        return int(self.params["edge_learner"].get("max_queued_batches", default))

    def edge_log(self) -> str:
        return self.procs["edge_learner"].output() if "edge_learner" in self.procs else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()[-2000:]}" for name, p in self.procs.items())

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            p.stop()


# -- the figures --------------------------------------------------------------------------------------------------
def settling(estimates: list[tuple[float, float]], rate: float, start: float) -> tuple[float | None, float]:
    """Seconds from ``start`` to the first estimate (time, bit/s) within TOLERANCE of ``rate``, and the share of
    that and every later estimate that is within it."""
    inside = [abs(value / rate - 1) <= TOLERANCE for _, value in estimates]
    if True not in inside:
        return None, 0.0
    first = inside.index(True)
    return estimates[first][0] - start, float(np.mean(inside[first:]))


def applied_updates(edge_log: str) -> list[tuple[float, str, int]]:
    """(time, kind, version) of every update the edge applied, in the order it applied them."""
    return [(float(t), kind, int(v)) for t, kind, v in APPLIED.findall(edge_log)]


def summarize(marks: list[dict], rec: dict[str, list[dict]], edge_log: str, queue_bound: int,
              source: dict[int, int] | None = None) -> dict:
    """The per-phase figures and the checks across the run (see the module's docstring); ``source``: the
    source model's class per frame index (``source_classes``), for accuracy beside the edge's."""
    applied = applied_updates(edge_log)
    rejected = [float(t) for t in REJECTED.findall(edge_log)]
    versions = [v for _, _, v in applied]
    truth = {tuple(t["stamp"]): t for t in rec["ground_truth"]}
    source = source or {}
    phases = []
    for mark in marks:
        t0, t1, rate = mark["start"], mark["end"], mark["rate_bps"]
        within = lambda items: [x for x in items if t0 <= x["t"] < t1]  # noqa: E731
        bw, ups, status = within(rec["bandwidth"]), within(rec["samples"]), within(rec["edge_status"])
        preds = within(rec["predictions"])
        row = {"phase": mark["phase"], "rate_bps": rate, "seconds": round(t1 - t0, 1)}
        if rate is None:
            down = [b["t"] for b in bw if not b["link_up"]]
            row["link_down_after_s"] = round(down[0] - t0, 1) if down else None
        else:
            for direction in ("up", "down"):
                series = [(b["t"], b[direction]) for b in bw if b["link_up"]]
                settle, share = settling(series, rate, t0)
                after = [v for t, v in series if settle is not None and t >= t0 + settle] or [v for _, v in series]
                estimate = float(np.median(after)) if after else 0.0
                row[f"{direction}_estimate_bps"] = estimate
                row[f"{direction}_error"] = estimate / rate - 1 if estimate else None
                row[f"{direction}_settle_s"] = None if settle is None else round(settle, 1)
                row[f"{direction}_within_after"] = share
        seconds = max(t1 - t0, 1e-9)
        sent = within(rec["updates"])
        row.update({
            "uploads_per_s": len(ups) / seconds, "upload_bytes": sum(u["bytes"] for u in ups),
            "upload_bps": 8 * sum(u["bytes"] for u in ups) / seconds,
            "budget_bps": float(np.median([b["budget"] for b in bw])) if bw else 0.0,
            "encodings": dict(Counter(u["encoding"] for u in sent)),
            "applied": sum(t0 <= t < t1 for t, _, _ in applied),
            "rejected": sum(t0 <= t < t1 for t in rejected),
            "queue_max": max((s["queue"] for s in status), default=0), "queue_bound": queue_bound,
            "predictions": len(preds),
            **_accuracy(preds, truth, source)})
        phases.append(row)
    return {"phases": phases,
            "order": {"applied": len(versions), "versions": versions,
                      "duplicates": len(versions) - len(set(versions)),
                      "out_of_order": sum(b <= a for a, b in zip(versions, versions[1:])),
                      "rejected": len(rejected)},
            "outage": _outage(marks, edge_log)}


def _accuracy(preds: list[dict], truth: dict, source: dict[int, int]) -> dict:
    joined = [(p, truth[k]) for p in preds if (k := tuple(p["stamp"])) in truth]
    if not joined:
        return {"accuracy": None, "source_accuracy": None, "frames_evaluated": 0}
    return {"accuracy": float(np.mean([p["cls"] == t["cls"] for p, t in joined])),
            "source_accuracy": float(np.mean([source.get(t["frame"]) == t["cls"] for _, t in joined]))
            if source else None, "frames_evaluated": len(joined)}


def source_classes(rec: dict[str, list[dict]], quick: bool, cache: Path | None) -> dict[int, int]:
    """The unadapted source model's class for every frame the camera published (regenerated from its seed)."""
    frames = sorted({t["frame"] for t in rec["ground_truth"]})
    if not frames:
        return {}
    x, y = load_fashion_mnist("test")
    stream = WorldStream(x, y, world_schedule(CAMERA_SCHEDULE), 0, "harsh")
    model = checkpoint.load(checkpoint.default_path("edge", quick, cache))
    to_input = Preprocessor(model.description).tensor
    out = {}
    with torch.no_grad():
        for i in range(0, len(frames), 256):
            chunk = frames[i:i + 256]
            images = np.stack([stream.frame(f)[0].image for f in chunk])
            out.update(zip(chunk, model.model.eval()(to_input(images)).argmax(1).tolist()))
    return out


def _outage(marks: list[dict], edge_log: str) -> dict:
    """The edge around the cut: whether its heartbeat noticed, when it heard the link was back, and when it
    applied the cloud's first update after it."""
    cut = next((m for m in marks if m["rate_bps"] is None), None)
    if cut is None:
        return {}
    events = [(float(t), kind) for t, kind in EVENT.findall(edge_log)]
    unreachable = next((t for t, k in events if k == "cloud unreachable" and cut["start"] <= t < cut["end"]), None)
    back = next((t for t, k in events if k == "link back" and t >= cut["end"]), None)
    resumed = next((t for t, _, _ in applied_updates(edge_log) if t >= cut["end"]), None)
    since = lambda t, t0: None if t is None else round(t - t0, 1)  # noqa: E731
    return {"cut_s": round(cut["end"] - cut["start"], 1), "edge_noticed_s": since(unreachable, cut["start"]),
            "link_back_after_s": since(back, cut["end"]), "first_update_after_s": since(resumed, cut["end"])}


# -- the report -------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f} %"


def _bps(x: float | None) -> str:
    return "-" if not x else rate_text(x).replace(" Mbit/s", " M").replace(" kbit/s", " k")


def to_markdown(results: dict) -> str:
    lines = [
        "| phase | estimate up / down (median once settled) | error up / down | within +-25 % after (share of "
        "later estimates within) up / down | "
        "uploads/s, bytes | upload rate / budget | update encodings | applied | refused | queue max / bound | "
        "predictions/s | accuracy (source model) |",
        "|---|---|---|---|---|---|---|---:|---:|---|---:|---|"]
    for r in results["phases"]:
        if r["rate_bps"] is None:
            est, err = "link down", "-"
            down = r["link_down_after_s"]
            settle = "-" if down is None else f"reported down after {down} s"
        else:
            est = f"{_bps(r['up_estimate_bps'])} / {_bps(r['down_estimate_bps'])}"
            err = f"{_pct(r['up_error'])} / {_pct(r['down_error'])}"
            settle = " / ".join("never" if r[f"{d}_settle_s"] is None else
                                f"{r[f'{d}_settle_s']} s ({100 * r[f'{d}_within_after']:.0f} %)"
                                for d in ("up", "down"))
        enc = ", ".join(f"{k} {v}" for k, v in sorted(r["encodings"].items())) or "none"
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.1f} %" + (
            f" ({100 * r['source_accuracy']:.1f} %)" if r["source_accuracy"] is not None else "")
        budget = _bps(r["budget_bps"]) if r["budget_bps"] else "0"
        lines.append(f"| {r['phase']} | {est} | {err} | {settle} | {r['uploads_per_s']:.2f}, "
                     f"{r['upload_bytes'] / 1e3:.0f} KB | {_bps(r['upload_bps'])} / {budget} | {enc} | "
                     f"{r['applied']} | {r['rejected']} | {r['queue_max']} / {r['queue_bound']} | "
                     f"{r['predictions'] / r['seconds']:.1f} | {acc} |")
    o, out = results["order"], results["outage"]
    lines += ["", f"Updates applied: {o['applied']}, versions {o['versions'][0] if o['versions'] else '-'}"
                  f"..{o['versions'][-1] if o['versions'] else '-'}; applied twice: {o['duplicates']}, out of order: "
                  f"{o['out_of_order']}, refused: {o['rejected']}."]
    if out:
        noticed = (f"its heartbeat noticed after {out['edge_noticed_s']} s" if out["edge_noticed_s"] is not None
                   else "its heartbeat did not time out within the cut")
        lines.append(f"Cut for {out['cut_s']} s: the edge served throughout ({noticed}); it heard the link was back "
                     f"{out['link_back_after_s']} s after it returned and applied the cloud's next update after "
                     f"{out['first_update_after_s']} s.")
    return "\n".join(lines)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = parse_schedule(args.schedule)
    trainer.ensure(args.quick, args.cache)
    load = os.getloadavg()[0]
    with netns.ShapedLink() as link:
        link.shape(phases[0].rate_bps)
        lr = LinkRun(link, out, quick=args.quick, cache=args.cache)
        try:
            lr.start()
            lr.wait_serving()
            marks = lr.play(phases, lambda p, i: print(f"[{i + 1}/{len(phases)}] {p.name} for {p.seconds:g} s",
                                                       flush=True))
        finally:
            lr.stop()
        rec, edge_log = lr.records(), lr.edge_log()
    results = {"schedule": args.schedule, "marks": marks, "update_deadline_s": UPDATE_DEADLINE_S,
               "load_before": load,
               "load_after": os.getloadavg()[0], "quick_models": args.quick,
               "shaping": f"tc tbf on both ends, burst max(1 ms of the rate, {netns.MIN_BURST} B), queue {netns.QUEUE}",
               **summarize(marks, rec, edge_log, lr.queue_bound(),
                           source_classes(rec, args.quick, args.cache))}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = to_markdown(results)
    (out / "results.md").write_text(f"# eclm-ros bench-link\n\nSchedule `{args.schedule}`; load average "
                                    f"{load:.1f} before, {results['load_after']:.1f} after.\n\n{table}\n")
    print(table)
    print(f"wrote {out}/results.json, results.md")
    return results


def cli(argv: list[str]) -> int:
    if argv[:1] == ["record"]:
        record(argv[1], Path(argv[2]))
        return 0
    parser = argparse.ArgumentParser(prog="eclm-ros bench-link", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="results and logs go here")
    parser.add_argument("--schedule", default=SCHEDULE, help="RATE:SECONDS,...; RATE like 50M, 256k, or down")
    parser.add_argument("--quick", action="store_true", help="tiny models (tests)")
    parser.add_argument("--cache", default=None, help="checkpoint cache directory")
    args = parser.parse_args(argv)
    try:
        parse_schedule(args.schedule)
    except ValueError as exc:
        parser.error(str(exc))
    why = netns.unavailable()
    if why:
        print(f"eclm-ros bench-link: {why}", file=sys.stderr)
        return 2
    try:
        run(args)
    except (RuntimeError, AssertionError, netns.LinkError) as exc:
        print(f"bench-link failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
