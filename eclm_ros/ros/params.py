"""Every node parameter, declared once: name, default, meaning, the values it takes, and whether it can change
while the node runs. The nodes declare them from here (with ranges in their descriptors, so
``ros2 param describe`` shows them), the README's parameter tables are generated from here
(``python -m eclm_ros.ros.params``), and a test checks the shipped YAML files against them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..core.messages import MAX_UPLOAD_BATCH
from ..sim.corruptions import WORLDS

BIG = 2 ** 62  # an integer parameter's "no upper limit" in its descriptor range


@dataclass(frozen=True)
class Param:
    """``low``/``high`` bound numbers (inclusive; ``low_open`` excludes ``low``); ``choices`` bound strings.
    A ``read_only`` parameter is read at start-up only; every other one takes effect when set."""

    name: str
    default: Any
    description: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    read_only: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused, or None."""
        if isinstance(self.default, bool) != isinstance(value, bool) or (
                isinstance(self.default, str) and not isinstance(value, str)):
            return f"expects a {type(self.default).__name__}"
        if isinstance(self.default, list):
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                return "expects a list of finite numbers"
            return None
        if self.choices and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return "must be finite"
            if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
                return f"must be {'>' if self.low_open else '>='} {self.low:g}"
            if self.high is not None and value > self.high:
                return f"must be <= {self.high:g}"
        return None

    def values_text(self) -> str:
        if self.choices:
            return " \\| ".join(self.choices)
        if self.low is None and self.high is None:
            return ""
        lo = "" if self.low is None else f"{'(' if self.low_open else '['}{self.low:g}"
        hi = "" if self.high is None or self.high >= BIG else f"{self.high:g}]"
        return f"{lo}, {hi or '∞)'}" if lo else f"≤ {hi}"


MiB = 1024 * 1024
CLOUD_NAMESPACE = Param("cloud_namespace", "/eclm", "namespace of the cloud coordinator's topics and services",
                        read_only=True)
KEYS_DIR = Param("keys_dir", "", "this machine's key ring, made by 'eclm-ros keys' ('' = $ECLM_ROS_KEYS, else "
                 "~/.config/eclm_ros/keys)", read_only=True)
AUTOSTART = Param("autostart", True, "configure and activate at start-up; false: wait unconfigured for a "
                  "lifecycle manager (ros2 lifecycle set, nav2_lifecycle_manager, launch lifecycle:=launch)",
                  read_only=True)

EDGE_LEARNER = (
    Param("edge_id", "", "this edge's id on the edge-cloud link ('' = the node's namespace, e.g. robot1)",
          read_only=True),
    Param("model_path", "", "edge model: an eclm_ros checkpoint, or your own ONNX (.onnx) or TorchScript file "
          "('' = the trained default shipped with the package, or $ECLM_ROS_CACHE's when that is set)", read_only=True),
    Param("labels_path", "", "your model's labels, one per line ('' = from the model's metadata, else class "
          "indices)", read_only=True),
    Param("input_mean", [], "your model's per-channel input mean on the 0..1 pixel scale ([] = from its "
          "metadata, else 0)", read_only=True),
    Param("input_std", [], "your model's per-channel input std ([] = from its metadata, else 1)", read_only=True),
    Param("input_shape", [], "[channels, height, width] of a TorchScript model ([] = from its metadata; ONNX "
          "files say it themselves)", read_only=True),
    Param("allow_unadaptable", False, "serve a model without normalisation layers (nothing adapts; no cloud "
          "update applies)", read_only=True),
    Param("upload_ratio", 0.2, "share of frames the edge may upload", 0.0, 1.0),
    Param("upload_batch", 16, "frames per SampleBatch", 1, MAX_UPLOAD_BATCH),
    Param("max_queued_batches", 32, "uploads kept while the cloud is unreachable (oldest dropped first)", 1, 100_000),
    Param("bn_momentum", 0.01, "per-frame EMA of BatchNorm statistics (forward-only adaptation)", 0.0, 1.0,
          low_open=True, read_only=True),
    Param("shift_threshold", 3.0, "a change of environment when the first layer's fast surprise exceeds this "
          "multiple of its slow one: the statistics then average the frames since (0 = never)", 0.0, 100.0,
          read_only=True),
    KEYS_DIR,
    Param("insecure", False, "lab only: start without keys, applying unsigned updates and sending unsigned "
          "uploads (keys found are still used)", read_only=True),
    Param("cloud_public_key", "", "PEM file of the cloud's Ed25519 key; unsigned or wrongly signed updates are "
          "refused ('' = cloud.pub in keys_dir)", read_only=True),
    Param("private_key", "", "PEM file of this edge's Ed25519 key that signs its uploads ('' = "
          "edge-<edge_id>.pem in keys_dir)", read_only=True),
    Param("max_update_bytes", 64 * MiB, "largest update accepted", 1, BIG),
    CLOUD_NAMESPACE,
    Param("register_period_s", 5.0, "re-registration heartbeat: a restarted cloud is noticed within this time",
          0.0, 3600.0, low_open=True),
    Param("adapt_locally", False, "trainable profile: adapt the sub-model on the edge too (Tent, off the serving "
          "path) and send its modules up for the cloud to integrate (ECLM)", read_only=True),
    Param("local_batch", 16, "frames per local adaptation step", 2, 256, read_only=True),
    Param("module_upload_frames", 512, "send the adapted modules up every this many adapted frames", 1, BIG),
    Param("runtime", "onnx", "inference runtime: onnx (ONNX Runtime, forward-only devices) or torch",
          choices=("onnx", "torch"), read_only=True),
    Param("runtime_threads", 1, "inference threads (1 suits a small CPU shared with the robot)", 1, 64,
          read_only=True),
    Param("chunk_timeout_s", 30.0, "a chunked update still incomplete after this long is given up (and counted "
          "as rejected)", 0.0, 3600.0, low_open=True),
    Param("max_params", 0, "sub-model parameter budget (0 = the cloud's default budget); a change re-registers",
          0, BIG),
    Param("max_macs", 0, "sub-model multiply-accumulates per frame (0 = default budget); a change re-registers",
          0, BIG),
    Param("max_latency_ms", 0.0, "per-frame latency budget (0 = none); a change re-registers", 0.0, 1e6),
    Param("device", "generic", "device name reported to the cloud (e.g. jetson-orin-nano)"),
    Param("image_transport", "raw", "camera input: raw (sensor_msgs/Image on `image`) or compressed "
          "(CompressedImage, jpeg/png, on `image/compressed`, as image_transport publishes it)",
          choices=("raw", "compressed"), read_only=True),
    AUTOSTART,
)

CLOUD_COORDINATOR = (
    Param("model_path", "", "the teacher: the modular cloud model checkpoint ('' = the trained default shipped with "
          "the package, or $ECLM_ROS_CACHE's when that is set), or any classifier file over the edges' labels "
          "(ONNX / TorchScript; distillation only)", read_only=True),
    Param("edge_model_path", "", "the edges' own model to distil into (the file they serve, ONNX / TorchScript / "
          "checkpoint; '' = sub-models of the modular cloud model, composed per edge budget)", read_only=True),
    Param("labels_path", "", "labels of imported models that carry none in their metadata, one per line",
          read_only=True),
    Param("state_dir", "", "where per-edge state is saved and restored ('' = not persisted)", read_only=True),
    KEYS_DIR,
    Param("insecure", False, "lab only: start without keys, sending unsigned updates and learning from any "
          "upload (keys found are still used)", read_only=True),
    Param("private_key", "", "PEM file of the Ed25519 key that signs updates ('' = cloud.pem in keys_dir)",
          read_only=True),
    Param("edge_keys_dir", "", "directory of enrolled edges' public keys (<edge_id>.pem): only uploads and "
          "modules their edge signed are learned from ('' = edges/ in keys_dir)", read_only=True),
    Param("strategy", "eclm_ros", "distil (CEMA), compose (+ECLM re-composition and module integration) or "
          "eclm_ros (+ECAvg merge rounds across edges)", choices=("distil", "compose", "eclm_ros"), read_only=True),
    Param("source_views", 64, "the cloud's labelled views restyled to an edge's uploads per learning step (0 = none: "
          "CEMA's losses alone, the least cloud CPU per robot); with source_steps, scaled down while uploads wait "
          "for the learner", 0, 4096, read_only=True),
    Param("source_steps", 16, "student steps per learning step on such views alone, beyond the main step (more: "
          "accuracy under harsh shifts for cloud CPU)", 0, 64, read_only=True),
    Param("update_encoding", "fp16", "tensor encoding of affine updates (a smaller one when the downlink needs it)",
          choices=("raw", "fp16", "int8")),
    Param("update_deadline_s", 1.0, "an update must reach its edge within this time on the measured downlink; a "
          "smaller encoding is used when it would not", 0.0, 3600.0, low_open=True),
    Param("max_pending_batches", 64, "upload batches waiting for the learner before new ones are dropped", 1,
          100_000),
    Param("save_period_s", 10.0, "seconds between state saves", 0.0, 86400.0, low_open=True),
    Param("max_chunk_bytes", 16 * MiB, "updates whose payload is larger travel in chunks of at most this many "
          "bytes", 1024, BIG),
    Param("merge_period_s", 30.0, "seconds between merge rounds across edges", 0.0, 86400.0, low_open=True),
    Param("ray_workers", 0, "learn on this many Ray workers, each holding the sessions of the edges placed on it "
          "(0 = on the coordinator's own thread; needs ray, requirements-ray.txt)", 0, 4096, read_only=True),
    Param("ray_address", "", "the Ray cluster to join ('auto', 'ray://head:10001'; '' = start local workers)",
          read_only=True),
    AUTOSTART,
)

BANDWIDTH_MONITOR = (
    Param("edge_id", "", "the edge end of the measured link ('' = the node's namespace)", read_only=True),
    Param("probe_period_s", 1.0, "seconds between probe cycles and estimates (cycles wait longer where probes would "
          "take more than a quarter of the link's time)", 0.05, 60.0),
    Param("probe_bytes", 262144, "largest uplink probe payload (probes size themselves to the link; 0 = uplink not "
          "measured)", 0, 16 * MiB),
    Param("reply_bytes", 262144, "largest downlink probe payload (0 = downlink not measured)", 0, 16 * MiB),
    Param("probe_time_s", 0.1, "time a large probe takes on the measured link (longer: steadier estimates, more "
          "probe traffic)", 0.0, 10.0, low_open=True),
    Param("probe_timeout_s", 2.0, "a probe slower than this is lost", 0.0, 600.0, low_open=True),
    Param("upload_share", 0.5, "share of the measured uplink the edge's uploads may use", 0.0, 1.0, low_open=True),
    Param("window", 5, "probe cycles in the estimate (their median)", 1, 10_000, read_only=True),
    CLOUD_NAMESPACE,
)

CAMERA_STREAM = (
    Param("source", "world", "world (Fashion-MNIST + schedule), folder, video, or bag (a rosbag2 .mcap / .db3 "
          "replayed as the camera)", choices=("world", "folder", "video", "bag"), read_only=True),
    Param("schedule", "clean:300,fog@3:600,contrast@3:600,gaussian_noise@3:600,motion_blur@3:600*",
          "environment schedule: name[@severity]:frames[/transition], comma-separated, '*' repeats; name 'mixed' "
          "draws each frame's corruption at random", read_only=True),
    Param("world", "mild", "corruption strengths: mild (CIFAR-10-C's) or harsh (ImageNet-C's)", choices=WORLDS,
          read_only=True),
    Param("seed", 0, "stream seed (same seed, same frames)", 0, BIG, read_only=True),
    Param("rate_hz", 30.0, "frames per second", 0.0, 1000.0, low_open=True),
    Param("size", [28, 28], "published frame [width, height] in pixels", read_only=True),
    Param("encoding", "mono8", "Image encoding", choices=("mono8", "rgb8", "bgr8")),
    Param("path", "", "image folder, video file or webcam index, or bag (directory or file) for source folder / "
          "video / bag", read_only=True),
    Param("bag_topic", "", "the bag's image topic (sensor_msgs/Image or CompressedImage; '' = its first)",
          read_only=True),
    Param("wait_for_subscribers", 1, "a bag's replay starts once this many subscriptions to `image` are matched "
          "(0 = at once)", 0, 1000, read_only=True),
    Param("bag_timing", False, "replay a bag at its recorded pace (false: at rate_hz)", read_only=True),
    Param("publish_clock", False, "publish /clock from the bag's recording times and keep the recorded header "
          "stamps (for nodes with use_sim_time)", read_only=True),
    Param("frame_id", "camera", "frame_id of the published images"),
    Param("max_frames", 0, "stop after this many frames (0 = never)", 0, BIG),
)

NODES: dict[str, tuple[Param, ...]] = {"edge_learner": EDGE_LEARNER, "cloud_coordinator": CLOUD_COORDINATOR,
                                       "bandwidth_monitor": BANDWIDTH_MONITOR, "camera_stream": CAMERA_STREAM}


def markdown_table(params: tuple[Param, ...]) -> str:
    lines = ["| parameter | default | values | set at run time | meaning |", "|---|---|---|:---:|---|"]
    for p in params:
        default = f"'{p.default}'" if isinstance(p.default, str) else p.default
        lines.append(f"| `{p.name}` | `{default}` | {p.values_text()} | {'no' if p.read_only else 'yes'} | "
                     f"{p.description} |")
    return "\n".join(lines)


def readme_section() -> str:
    """The README's parameter tables."""
    parts = []
    for node, params in NODES.items():
        parts += [f"**{node}** (`config/{node}.yaml`)", "", markdown_table(params), ""]
    return "\n".join(parts).rstrip() + "\n"


class NodeParameters:
    """Declares a node's parameters from their ``Param`` specs (ranges in the descriptors), refuses bad values
    with the reason at start-up and on every later ``set_parameters``, and hands accepted run-time changes to
    ``on_change(name, value)``, which may refuse them too by raising ValueError."""

    def __init__(self, node, params: tuple[Param, ...], on_change: Callable[[str, Any], None] | None = None) -> None:
        from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

        self.node, self.specs, self.on_change = node, {p.name: p for p in params}, on_change
        self.values: dict[str, Any] = {}
        for p in params:
            descriptor = ParameterDescriptor(description=p.description, read_only=p.read_only)
            if p.choices:
                descriptor.additional_constraints = f"one of: {', '.join(p.choices)}"
            if p.low is not None and not isinstance(p.default, bool):
                if isinstance(p.default, float):
                    descriptor.floating_point_range = [FloatingPointRange(from_value=float(p.low),
                                                                          to_value=float(p.high), step=0.0)]
                elif isinstance(p.default, int):
                    descriptor.integer_range = [IntegerRange(from_value=int(p.low), to_value=int(p.high), step=1)]
            if isinstance(p.default, list) and not p.default:
                descriptor.dynamic_typing = True  # an empty list has no type of its own
            node.declare_parameter(p.name, p.default, descriptor)
            value = node.get_parameter(p.name).value
            if isinstance(p.default, list) and value is None:  # `[]` in a parameter file reads as "not set"
                value = []
            why = p.problem(value)
            if why is not None:
                raise ValueError(f"parameter {p.name}={value!r} refused: {why}")
            self.values[p.name] = value
        node.add_on_set_parameters_callback(self._on_set)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def _on_set(self, params):
        from rcl_interfaces.msg import SetParametersResult

        for p in params:
            spec = self.specs.get(p.name)
            if spec is None:
                continue  # use_sim_time and the like: rclpy's own
            why = spec.problem(p.value)
            if why is None and self.on_change is not None:
                try:
                    self.on_change(p.name, p.value)
                except ValueError as exc:
                    why = str(exc)
            if why is not None:
                return SetParametersResult(successful=False, reason=f"{p.name}={p.value!r} refused: {why}")
            self.values[p.name] = p.value
        return SetParametersResult(successful=True)


def main() -> None:
    print(readme_section(), end="")


if __name__ == "__main__":
    main()
