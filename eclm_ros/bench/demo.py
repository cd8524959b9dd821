"""`eclm-ros demo`: the main job. The whole edge-cloud loop as four ROS 2 processes over DDS.

camera_stream (the shifting world) -> edge_learner -> cloud_coordinator, with the bandwidth_monitor measuring
the link, for a few minutes; a live line shows frames, rolling accuracy, model version, upload ratio and the
link; at the end runs/<stamp>/ holds report.md, report.json and accuracy.png (rolling accuracy over time with
the environment changes marked, beside the source model and the best on-device method, BN or Tent on the same
edge model, on the very same frames) and bag/, an .mcap rosbag2 of what the system published (predictions,
ground truth, link estimates, edge status, diagnostics, and the updates with their tensor payloads left out).
Labels reach only this evaluator (on their own topic), never the edge.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console

from ..core import checkpoint
from ..core.signing import KeyRing
from ..sim.corruptions import WORLDS
from ..sim.data import load_fashion_mnist
from ..sim.evaluation import Evaluator
from ..sim.world import WorldStream, parse_schedule
from ..training import trainer
from ..ros.launcher import NodeProcess, Recorder, node_executable, wait_for
from .report import plot_rolling

DEFAULT_SCHEDULE = ("clean:450,fog@3:900,contrast@3:900,gaussian_noise@3:900,motion_blur@3:900,"
                    "brightness@3:900,pixelate@3:900,frost@3:900")
UPDATES = "/eclm/updates/robot1"  # the cloud's updates for the demo's one edge (ros.links.updates_topic)
NODES = (("cloud_coordinator", "/eclm"), ("bandwidth_monitor", "/robot1"), ("edge_learner", "/robot1"),
         ("camera_stream", "/robot1"))


def _config_dir() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("eclm_ros")) / "config"


def _write_params(out: Path, args, keys: KeyRing) -> dict[str, Path]:
    config = _config_dir()
    def model(name: str) -> str:
        return str(checkpoint.default_path(name, args.quick, args.cache))

    overrides = {
        "cloud_coordinator": {"model_path": model("cloud"), "keys_dir": str(keys.root), "state_dir": str(out / "cloud_state")},
        "edge_learner": {"model_path": model("edge"), "keys_dir": str(keys.root)},
        "camera_stream": {"schedule": args.schedule, "world": args.world, "seed": args.seed, "rate_hz": args.rate},
        "bandwidth_monitor": {},
    }
    paths = {}
    for name, values in overrides.items():
        base = yaml.safe_load((config / f"{name}.yaml").read_text())
        params = next(iter(base.values()))["ros__parameters"]
        params.update(values)
        paths[name] = out / "params" / f"{name}.yaml"
        paths[name].parent.mkdir(parents=True, exist_ok=True)
        paths[name].write_text(yaml.safe_dump(base))
    return paths


ON_DEVICE = ("bn", "tent")  # the on-device methods the demo compares with, on the same edge model


def _on_same_frames(methods: list[str], frames: list[int], schedule: str, seed: int, world: str, quick: bool,
                    cache) -> dict[str, Evaluator]:
    """Each of ``methods`` (``eclm-ros bench``'s, in one process) on the very frames the demo evaluated,
    regenerated from the seed: the source model, the on-device methods and the same system without DDS,
    timing or dropped frames."""
    from .method import BenchContext
    from .run import METHODS, run_method

    x, y = load_fashion_mnist("test")
    stream = WorldStream(x, y, parse_schedule(schedule), seed, world)
    batches = list(stream.batches(64, stop=max(frames) + 1))
    wanted, out = set(frames), {}
    context = BenchContext(quick, seed, Path(cache) if cache else None)  # loads the models once; hands out copies
    for name in methods:
        ev = run_method(METHODS[name](context), batches)["_evaluator"]
        out[name] = Evaluator({i: p for i, p in ev.predictions.items() if i in wanted},
                              {i: t for i, t in ev.truths.items() if i in wanted})
    return out


def run(args, console: Console) -> dict:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / stamp
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]eclm_ros demo[/] -> {out}")
    started = time.monotonic()
    trainer.ensure(args.quick, args.cache)  # shipped, or trained once before the nodes start (they only load)
    keys = KeyRing(out / "keys")  # `eclm-ros keys init robot1`: signed updates and uploads, as on a robot
    keys.init_cloud()
    keys.enrol("robot1")
    params = _write_params(out, args, keys)
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(_config_dir() / "fastdds_profile.xml"))

    from diagnostic_msgs.msg import DiagnosticArray

    from eclm_ros.msg import BandwidthEstimate, EdgeStatus, GroundTruth, ModelUpdate, Prediction
    from ..ros.ros_io import RELIABLE_QOS, UPDATE_QOS

    recorder = Recorder({"/robot1/predictions": (Prediction, RELIABLE_QOS),
                         "/robot1/ground_truth": (GroundTruth, RELIABLE_QOS),
                         "/robot1/bandwidth": (BandwidthEstimate, RELIABLE_QOS),
                         "/eclm/edge_status": (EdgeStatus, RELIABLE_QOS),
                         UPDATES: (ModelUpdate, UPDATE_QOS),
                         "/diagnostics": (DiagnosticArray, 50)})
    def start(name: str, ns: str) -> NodeProcess:
        return NodeProcess([*node_executable(name), "--ros-args", "-r", f"__ns:={ns}", "--params-file",
                            str(params[name])], out / f"{name}.log")

    procs = [start(name, ns) for name, ns in NODES if name != "camera_stream"]
    preds, truths = recorder.received["/robot1/predictions"], recorder.received["/robot1/ground_truth"]
    try:
        # the camera starts once the edge reports (its model is loaded), so the stream's first frames count
        wait_for(lambda: recorder.received["/eclm/edge_status"] or not all(p.alive() for p in procs), 120,
                 "the edge learner to come up")
        procs.append(start("camera_stream", "/robot1"))
        t0, first_prediction_s = time.monotonic(), None
        while time.monotonic() - t0 < args.duration:
            time.sleep(0.5)
            if preds and first_prediction_s is None:
                first_prediction_s = time.monotonic() - started
            dead = [p.command[1] for p in procs if not p.alive()]
            if dead:
                raise RuntimeError(f"node process ended early: {dead}; see the logs in {out}")
            recent = {(t.header.stamp.sec, t.header.stamp.nanosec): t.class_id for t in truths[-600:]}
            hits = [p.class_id == recent[k] for p in preds[-300:]
                    if (k := (p.header.stamp.sec, p.header.stamp.nanosec)) in recent]
            link = recorder.received["/robot1/bandwidth"][-1] if recorder.received["/robot1/bandwidth"] else None
            status = recorder.received["/eclm/edge_status"][-1] if recorder.received["/eclm/edge_status"] else None
            env = truths[-1].environment if truths else "-"
            line = (f"{time.monotonic() - t0:4.0f}s frames {len(preds):5d} {env:<17} "
                    f"acc {np.mean(hits) if hits else float('nan'):.3f} v{preds[-1].model_version if preds else 0} "
                    f"up {status.upload_ratio if status else 0:.2f} "
                    f"link {link.uplink_bps / 1e6 if link else 0:.0f}Mb/s {link.rtt_ms if link else 0:.1f}ms")
            sys.stdout.write("\r" + line[:console.width - 1].ljust(console.width - 1))
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        for p in reversed(procs):
            p.stop()
        recorder.close()
    return _report(out, args, preds, truths, recorder, console, first_prediction_s, _record(out / "bag", recorder))


def _record(path: Path, recorder) -> int:
    """The run as an .mcap bag; an update's tensors are its bulk (and the model), so only its header, version,
    kind, structure, digests and signature are kept."""
    from ..ros.bag_writer import write_bag

    for update in recorder.received[UPDATES]:
        update.bundle.payload = []
    return write_bag(path, {topic: recorder.timed(topic) for topic in recorder.received})


def _report(out: Path, args, preds, truths, recorder, console: Console,
            first_prediction_s: float | None, bag_messages: int) -> dict:
    edge = Evaluator()
    by_stamp = {(t.header.stamp.sec, t.header.stamp.nanosec): t for t in truths}
    joined = [(by_stamp[k], p) for p in preds if (k := (p.header.stamp.sec, p.header.stamp.nanosec)) in by_stamp]
    for t, p in joined:
        edge.add_predictions([t.frame_index], [p.class_id])
        edge.add_truth(t.frame_index, t.class_id, t.segment_index, t.environment)
    same = _on_same_frames(["source", *ON_DEVICE, "eclm_ros"], [t.frame_index for t, _ in joined], args.schedule,
                           args.seed, args.world, args.quick, args.cache) if joined else {}
    source, bench = same.get("source", Evaluator()), same.get("eclm_ros", Evaluator())
    best = max(ON_DEVICE, key=lambda m: same[m].accuracy()) if joined else ON_DEVICE[0]
    on_device = same.get(best, Evaluator())
    statuses = recorder.received["/eclm/edge_status"]
    links = recorder.received["/robot1/bandwidth"]
    last = statuses[-1] if statuses else None
    report = {
        "duration_s": args.duration, "schedule": args.schedule, "world": args.world, "seed": args.seed,
        "rate_hz": args.rate,
        "quick_models": args.quick, "frames_published": len(truths), "predictions": len(preds),
        "frames_evaluated": len(joined), "accuracy": edge.accuracy(), "source_accuracy": source.accuracy(),
        "on_device_accuracy": {m: same[m].accuracy() for m in ON_DEVICE if m in same}, "best_on_device": best,
        "bench_accuracy": bench.accuracy(), "first_prediction_s": first_prediction_s,
        "per_segment": edge.per_segment(), "source_per_segment": source.per_segment(),
        "on_device_per_segment": on_device.per_segment(),
        "final_model_version": max((p.model_version for p in preds), default=0),
        "upload_ratio": last.upload_ratio if last else 0.0,
        "updates_applied": last.updates_applied if last else 0,
        "updates_rejected": last.updates_rejected if last else 0,
        "edge_fps": last.fps if last else 0.0, "edge_latency_p50_ms": last.latency_p50_ms if last else 0.0,
        "link_uplink_mbps": float(np.median([m.uplink_bps for m in links]) / 1e6) if links else 0.0,
        "link_rtt_ms": float(np.median([m.rtt_ms for m in links])) if links else 0.0,
        "bag": str(out / "bag"), "bag_messages": bag_messages,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    plot_rolling(out / "accuracy.png", [(f"eclm_ros demo, {args.world} world", {
        "eclm_ros edge (forward-only, cloud over DDS)": edge,
        f"best on-device: {best} (same edge model, same frames)": on_device,
        "source model (no adaptation)": source})], window=max(30, int(args.rate * 10)))
    lines = ["# eclm_ros demo report", "",
             f"{report['frames_evaluated']} frames over {args.duration:.0f} s at {args.rate} Hz, schedule "
             f"`{args.schedule}`, {args.world} world, seed {args.seed}{' (quick models)' if args.quick else ''}.", "",
             "| | value |", "|---|---:|",
             f"| edge accuracy (adapting) | {report['accuracy']:.4f} |",
             f"| source model on the same frames | {report['source_accuracy']:.4f} |",
             *[f"| on-device {m} (same edge model, same frames){' (best)' if m == best else ''} | "
               f"{acc:.4f} |" for m, acc in report["on_device_accuracy"].items()],
             f"| `eclm-ros bench` (in-process, same frames) | {report['bench_accuracy']:.4f} |",
             f"| first prediction after start | {first_prediction_s or float('nan'):.1f} s |",
             f"| final model version | {report['final_model_version']} |",
             f"| updates applied / rejected | {report['updates_applied']} / {report['updates_rejected']} |",
             f"| upload ratio | {report['upload_ratio']:.3f} |",
             f"| edge fps / p50 latency | {report['edge_fps']:.1f} / {report['edge_latency_p50_ms']:.2f} ms |",
             f"| link uplink / RTT (median) | {report['link_uplink_mbps']:.1f} Mbit/s / {report['link_rtt_ms']:.1f} ms |",
             f"| recorded (`ros2 bag info bag`) | {bag_messages} messages |",
             "", f"| segment | edge | {best} | source |", "|---|---:|---:|---:|"]
    for seg, acc in report["per_segment"].items():
        lines.append(f"| {seg.split(':', 1)[1]} | {acc:.3f} | "
                     f"{report['on_device_per_segment'].get(seg, float('nan')):.3f} | "
                     f"{report['source_per_segment'].get(seg, float('nan')):.3f} |")
    lines += ["", "![rolling accuracy](accuracy.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    console.print("\n".join(lines[:18]))
    console.print(f"wrote {out}/report.md, report.json, accuracy.png, bag/")
    return report


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="eclm-ros demo", description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=240.0, help="seconds to run the loop")
    parser.add_argument("--quick", action="store_true", help="tiny models (tests)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, help="environment schedule (see world.py)")
    parser.add_argument("--world", choices=WORLDS, default="harsh", help="corruption strengths: harsh "
                        "(ImageNet-C's; the default: the source model collapses, adaptation decides) or mild "
                        "(CIFAR-10-C's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs", help="reports go to OUT/<stamp>/")
    parser.add_argument("--cache", default=None, help="checkpoint cache directory")
    args = parser.parse_args(argv)
    if args.duration <= 0 or not 0 < args.rate <= 1000:
        parser.error("--duration must be > 0 and --rate in (0, 1000]")
    try:
        parse_schedule(args.schedule)
    except ValueError as exc:
        parser.error(str(exc))
    console = Console()
    try:
        run(args, console)
    except (RuntimeError, FileNotFoundError, AssertionError) as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    return 0
