"""Transport benchmarks over real DDS between separate processes: the ROS side of `eclm-ros bench-edge`.

Fast DDS reads its XML profile once per process, so each configuration (the shipped profile, or Fast DDS's
defaults) runs in a process of its own: ``bench_edge`` starts one per configuration and reads the JSON it writes.

    python -m eclm_ros.bench.dds e2e --profile shipped|none --out r.json [--seconds 10] [--quick]
        camera (640x480 rgb8, 30 Hz, sensor-data QoS) -> the real edge_learner -> this process, recording
        /predictions: latency = receive time - the Image header stamp (one host, one clock)
    python -m eclm_ros.bench.dds updates --profile shipped|none --out r.json [--count 10] [--megabytes 20]
        ModelUpdates (reliable, transient-local, chunked as the cloud chunks them) to a receiver process that
        reassembles them, checks the digest and acknowledges each
``camera`` and ``update-receiver`` are the helper processes those two start.
"""
from __future__ import annotations

import argparse
import array
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from ..core.checkpoint import default_path
from ..core.signing import KeyRing
from ..sim.camera import camera_frames
from .report import latency_stats

PROFILE_VAR = "FASTDDS_DEFAULT_PROFILES_FILE"


def shipped_profile() -> Path:
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("eclm_ros")) / "config" / "fastdds_profile.xml"


def _spin_node(name: str):
    import rclpy

    rclpy.init()
    return rclpy.create_node(name)


def _wait(predicate, timeout: float, what: str, node=None) -> None:
    import rclpy

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        if node is not None:
            rclpy.spin_once(node, timeout_sec=0.05)
        else:
            time.sleep(0.05)


def camera(args) -> dict:
    """Publish frames at a fixed rate, each stamped just before it is published."""
    import rclpy
    from sensor_msgs.msg import Image

    from eclm_ros.ros.ros_io import SENSOR_QOS

    node = _spin_node("bench_camera")
    pub = node.create_publisher(Image, args.topic, SENSOR_QOS)
    frames = [array.array("B", f.tobytes()) for f in camera_frames(30, args.width, args.height)]
    _wait(lambda: pub.get_subscription_count() > 0, args.timeout, f"a subscriber on {args.topic}")
    time.sleep(1.0)  # the subscriber's own publishers are still being discovered
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    period, total = 1.0 / args.rate, args.warmup + args.frames
    next_due = time.monotonic()
    late = 0
    for i in range(total):
        msg.header.frame_id = "warmup" if i < args.warmup else "frame"
        msg.data = frames[i % len(frames)]
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
        pub.publish(msg)
        next_due += period
        pause = next_due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            late += 1
    time.sleep(0.5)
    node.destroy_node()
    rclpy.try_shutdown()
    return {"published": args.frames, "warmup": args.warmup, "late_publishes": late}


def e2e(args) -> dict:
    """Camera -> edge_learner -> recorder, three processes; latency and delivery of the measured frames."""
    import yaml

    from eclm_ros.ros.launcher import NodeProcess, Recorder, node_executable
    from eclm_ros.msg import Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS

    tmp = Path(tempfile.mkdtemp(prefix="eclm-bench-e2e-"))
    ns = "/bench_e2e"
    keys = KeyRing(tmp / "keys")  # the edge as shipped: it will not start without its keys
    keys.init_cloud()
    keys.enrol("bench")
    params = tmp / "edge_learner.yaml"
    params.write_text(yaml.safe_dump({"/**/edge_learner": {"ros__parameters": {
        "edge_id": "bench", "model_path": str(default_path("edge", args.quick, args.cache or None)),
        "keys_dir": str(keys.root),
        "runtime": args.runtime,
        "cloud_namespace": f"{ns}/no_cloud"}}}))
    received: list[tuple[int, int, str, int]] = []

    def on_prediction(msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        received.append((time.time_ns(), stamp, msg.header.frame_id, msg.model_version))

    recorder = Recorder({})
    recorder.node.create_subscription(Prediction, f"{ns}/predictions", on_prediction, RELIABLE_QOS)
    procs = []
    try:
        procs.append(NodeProcess([*node_executable("edge_learner"), "--ros-args", "-r", f"__ns:={ns}",
                                  "--params-file", str(params)], tmp / "edge_learner.log"))
        cam_out = tmp / "camera.json"
        procs.append(NodeProcess([sys.executable, "-m", "eclm_ros.bench.dds", "camera", "--topic",
                                  f"{ns}/image", "--frames", str(args.frames), "--warmup", str(args.warmup),
                                  "--out", str(cam_out)], tmp / "camera.log"))
        deadline = time.monotonic() + args.timeout + (args.frames + args.warmup) / 30.0
        while procs[1].alive() and time.monotonic() < deadline:
            if not procs[0].alive():
                raise RuntimeError(f"edge_learner died:\n{procs[0].output()[-3000:]}")
            time.sleep(0.2)
        if procs[1].alive() or not cam_out.exists():
            raise RuntimeError(f"the camera did not finish:\n{procs[1].output()[-2000:]}\n"
                               f"{procs[0].output()[-2000:]}")
        time.sleep(1.0)  # the last predictions in flight
        edge_alive = procs[0].alive()
    finally:
        for p in procs:
            p.stop()
        recorder.close()
    cam = json.loads(cam_out.read_text())
    measured = [r for r in received if r[2] == "frame"]
    latencies = [(recv - stamp) / 1e6 for recv, stamp, _, _ in measured]
    return {"frames_published": cam["published"], "predictions": len(measured),
            "delivery_ratio": len(measured) / max(cam["published"], 1), "late_publishes": cam["late_publishes"],
            "served_versions": sorted({v for *_, v in received}), "edge_alive": edge_alive,
            "runtime": args.runtime, **latency_stats(latencies), "log_dir": str(tmp)}


def update_receiver(args) -> None:
    """Reassemble ModelUpdates, check each digest, acknowledge the complete ones (until SIGINT)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from std_msgs.msg import String

    from eclm_ros.core.chunking import Reassembler
    from eclm_ros.core.tensor_codec import digest
    from eclm_ros.msg import ModelUpdate
    from eclm_ros.ros.ros_io import RELIABLE_QOS, UPDATE_QOS

    node = _spin_node("bench_update_receiver")
    chunks = Reassembler(max_payloads=4, max_bytes=512 * 1024 * 1024, timeout_s=60.0)
    acks = node.create_publisher(String, f"{args.namespace}/ack", RELIABLE_QOS)

    def on_update(msg) -> None:
        payload = chunks.add(msg.update_id, msg.chunk_index, msg.chunk_count, msg.bundle.payload)
        if payload is None:
            return
        if digest(payload) != msg.bundle.digest:
            node.get_logger().error(f"update {msg.update_id}: digest mismatch")
            return
        acks.publish(String(data=msg.update_id))

    node.create_subscription(ModelUpdate, f"{args.namespace}/model_updates", on_update, UPDATE_QOS)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def updates(args) -> dict:
    """``count`` updates of ``megabytes`` each, one at a time: delivered (reassembled, digest checked) and the
    time from the first chunk's publish to the acknowledgement."""
    from rclpy.duration import Duration
    from std_msgs.msg import String

    from eclm_ros.core.chunking import split
    from eclm_ros.core.tensor_codec import pack
    from eclm_ros.ros.launcher import NodeProcess, Recorder
    from eclm_ros.msg import ModelUpdate
    from eclm_ros.ros.ros_io import RELIABLE_QOS, UPDATE_QOS, bundle_to_msg

    tmp = Path(tempfile.mkdtemp(prefix="eclm-bench-updates-"))
    ns = "/bench_updates"
    acked: dict[str, int] = {}
    recorder = Recorder({})
    recorder.node.create_subscription(String, f"{ns}/ack", lambda m: acked.setdefault(m.data, time.time_ns()),
                                      RELIABLE_QOS)
    pub = recorder.publisher(ModelUpdate, f"{ns}/model_updates", UPDATE_QOS)
    receiver = NodeProcess([sys.executable, "-m", "eclm_ros.bench.dds", "update-receiver", "--namespace", ns],
                           tmp / "receiver.log")
    floats = int(args.megabytes * 1024 * 1024) // 4
    bundle = pack({"weights": np.random.default_rng(0).standard_normal(floats).astype(np.float32)}, compress=False)
    parts = split(bundle.payload, args.max_chunk_bytes)
    times: list[float | None] = []
    try:
        _wait(lambda: pub.get_subscription_count() > 0 and recorder.node.count_publishers(f"{ns}/ack") > 0,
              args.timeout, "the update receiver")
        time.sleep(0.5)
        for i in range(args.count):
            msg = ModelUpdate(target_edge="bench", update_id=uuid.uuid4().hex, version=i + 1, base_version=i,
                              kind=ModelUpdate.KIND_MODULES, submodel_spec="{}", chunk_count=len(parts))
            bundle_to_msg(bundle, msg.bundle)
            start = time.time_ns()
            for j, part in enumerate(parts):  # paced as the cloud coordinator paces its chunks
                if j and j % UPDATE_QOS.depth == 0:
                    pub.wait_for_all_acked(Duration(seconds=5.0))
                msg.chunk_index, msg.bundle.payload = j, part
                pub.publish(msg)
            deadline = time.monotonic() + args.update_timeout
            while msg.update_id not in acked and time.monotonic() < deadline:
                time.sleep(0.005)
            times.append((acked[msg.update_id] - start) / 1e6 if msg.update_id in acked else None)
    finally:
        receiver.stop()
        recorder.close()
    done = [t for t in times if t is not None]
    return {"count": args.count, "delivered": len(done), "megabytes": args.megabytes, "chunks": len(parts),
            "max_chunk_bytes": args.max_chunk_bytes, "times_ms": times, **latency_stats(done), "log_dir": str(tmp)}


def _set_profile(choice: str) -> None:
    """Before any DDS participant exists: the shipped profile, none (Fast DDS defaults) or an XML file."""
    os.environ.pop(PROFILE_VAR, None)
    if choice != "none":
        os.environ[PROFILE_VAR] = str(shipped_profile() if choice == "shipped" else Path(choice).resolve())
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(101, 232)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eclm_ros.bench.dds", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("e2e", "updates"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default="shipped", help="shipped, none (Fast DDS defaults) or an XML file")
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--timeout", type=float, default=120.0, help="seconds for processes to start and match")
    e = sub.choices["e2e"]
    e.add_argument("--frames", type=int, default=300)
    e.add_argument("--warmup", type=int, default=60)
    e.add_argument("--quick", action="store_true")
    e.add_argument("--cache", default="")
    e.add_argument("--runtime", choices=("onnx", "torch"), default="onnx")
    u = sub.choices["updates"]
    u.add_argument("--count", type=int, default=10)
    u.add_argument("--megabytes", type=float, default=20.0)
    u.add_argument("--max-chunk-bytes", type=int, default=16 * 1024 * 1024)
    u.add_argument("--update-timeout", type=float, default=10.0)
    c = sub.add_parser("camera")
    c.add_argument("--topic", required=True)
    c.add_argument("--frames", type=int, default=300)
    c.add_argument("--warmup", type=int, default=60)
    c.add_argument("--rate", type=float, default=30.0)
    c.add_argument("--width", type=int, default=640)
    c.add_argument("--height", type=int, default=480)
    c.add_argument("--timeout", type=float, default=120.0)
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("update-receiver")
    r.add_argument("--namespace", required=True)
    args = parser.parse_args(argv)
    if args.mode == "update-receiver":
        update_receiver(args)
        return 0
    if args.mode in ("e2e", "updates"):
        _set_profile(args.profile)
    result = {"e2e": e2e, "updates": updates, "camera": camera}[args.mode](args)
    if args.mode != "camera":
        result["profile"] = args.profile
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
