"""ROS-side conversions shared by the nodes: images, tensor bundles, QoS profiles, diagnostics.

Kept out of the node files (which hold only a node class and ``main``) and out of the core (which imports no
ROS). No cv_bridge: it is not available from PyPI, and a zero-copy numpy view is all the edge needs.
"""
from __future__ import annotations

import json
from typing import Mapping

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image

from eclm_ros.core.tensor_codec import Bundle, TensorSpec
from eclm_ros.msg import TensorBundle
from eclm_ros.msg import TensorSpec as TensorSpecMsg

IMAGE_CHANNELS = {"mono8": 1, "rgb8": 3, "bgr8": 3}

#: Camera frames: best effort, keep the latest few (the ROS sensor-data profile).
SENSOR_QOS = qos_profile_sensor_data
#: Uploads, predictions, status: every message matters, a short queue bounds memory.
RELIABLE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Model updates: reliable and transient-local, so an edge that (re)joins late still gets the newest ones.
UPDATE_QOS = QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                        durability=DurabilityPolicy.TRANSIENT_LOCAL)


class ImageError(ValueError):
    """A sensor_msgs/Image that cannot be a camera frame (encoding, size, step, data length)."""


def image_to_numpy(msg: Image) -> np.ndarray:
    """A zero-copy uint8 view (HxW or HxWx3, channel order as in ``msg.encoding``) of an Image message."""
    channels = IMAGE_CHANNELS.get(msg.encoding)
    if channels is None:
        raise ImageError(f"unsupported encoding {msg.encoding!r} (use {', '.join(IMAGE_CHANNELS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageError(f"empty image {w}x{h}")
    if step < w * channels:
        raise ImageError(f"step {step} is shorter than a row of {w} x {channels} bytes")
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * h:
        raise ImageError(f"data holds {buf.size} bytes, {w}x{h} {msg.encoding} with step {step} needs {step * h}")
    rows = buf.reshape(h, step)[:, :w * channels]
    return rows.reshape(h, w) if channels == 1 else rows.reshape(h, w, channels)


def numpy_to_image(img: np.ndarray, encoding: str, msg: Image | None = None) -> Image:
    """Fill (or create) an Image from a uint8 HxW / HxWx3 array."""
    channels = IMAGE_CHANNELS.get(encoding)
    if channels is None:
        raise ImageError(f"unsupported encoding {encoding!r}")
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != channels) \
            or (img.ndim == 2 and channels != 1):
        raise ImageError(f"array {img.dtype} {img.shape} does not fit encoding {encoding}")
    msg = msg if msg is not None else Image()
    msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = msg.width * channels
    msg.data = np.ascontiguousarray(img).tobytes()
    return msg


def bundle_to_msg(bundle: Bundle, msg: TensorBundle | None = None) -> TensorBundle:
    msg = msg if msg is not None else TensorBundle()
    msg.tensors = [TensorSpecMsg(name=s.name, dtype=s.dtype, shape=list(s.shape), encoding=s.encoding,
                                 scale=float(s.scale), zero_point=int(s.zero_point), offset=int(s.offset),
                                 length=int(s.length)) for s in bundle.specs]
    msg.compression = bundle.compression
    msg.raw_size = int(bundle.raw_size)
    msg.payload = bundle.payload
    msg.digest = bundle.digest
    return msg


def bundle_signed_parts(msg: TensorBundle) -> list[bytes]:
    """What an upload signature covers of a TensorBundle: every field that decides how the payload decodes (as
    it reads after the float32 wire encoding, so sender and receiver agree) and the payload itself."""
    specs = [[t.name, t.dtype, list(t.shape), t.encoding, float(np.float32(t.scale)), int(t.zero_point),
              int(t.offset), int(t.length)] for t in msg.tensors]
    header = json.dumps([msg.compression, int(msg.raw_size), msg.digest, specs], separators=(",", ":")).encode()
    return [header, bytes(msg.payload)]


def msg_to_bundle(msg: TensorBundle, payload: bytes | None = None) -> Bundle:
    """A Bundle from a message; ``payload`` overrides the message's own (reassembled chunks)."""
    specs = tuple(TensorSpec(s.name, s.dtype, tuple(int(d) for d in s.shape), s.encoding, float(s.scale),
                             int(s.zero_point), int(s.offset), int(s.length)) for s in msg.tensors)
    data = payload if payload is not None else np.frombuffer(msg.payload, dtype=np.uint8).tobytes()
    return Bundle(specs, data, msg.compression, int(msg.raw_size), msg.digest)


def profile_from_msg(msg):
    """msg/DeviceProfile -> the core's Profile."""
    from eclm_ros.core.strategies import Profile

    return Profile(trainable=msg.runtime == msg.RUNTIME_TRAINABLE, max_params=int(msg.max_params),
                   max_macs=int(msg.max_macs), max_latency_ms=float(msg.max_latency_ms))


def diagnostic(name: str, hardware_id: str, level: bytes, message: str,
               values: Mapping[str, object]) -> DiagnosticStatus:
    """One DiagnosticStatus; ``level`` is DiagnosticStatus.OK / WARN / ERROR / STALE (a ``byte`` field)."""
    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id, message=message,
                            values=[KeyValue(key=str(k), value=str(v)) for k, v in values.items()])


def diagnostic_array(stamp, statuses: list[DiagnosticStatus]) -> DiagnosticArray:
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = statuses
    return msg


class NodeParameters:
    """Declares parameters with descriptions and refuses bad values, at start-up (from the YAML) and on
    every later ``set_parameters`` (the reason goes back to the caller)."""

    def __init__(self, node) -> None:
        self.node = node
        self.checks: dict[str, tuple] = {}
        node.add_on_set_parameters_callback(self._on_set)

    def declare(self, name: str, default, description: str, check=None, why: str = "", read_only: bool = False):
        from rcl_interfaces.msg import ParameterDescriptor

        self.node.declare_parameter(name, default, ParameterDescriptor(description=description, read_only=read_only))
        value = self.node.get_parameter(name).value
        if check is not None and not check(value):
            raise ValueError(f"parameter {name}={value!r} refused: {why}")
        self.checks[name] = (check, why)
        return value

    def _on_set(self, params):
        from rcl_interfaces.msg import SetParametersResult

        for p in params:
            check, why = self.checks.get(p.name, (None, ""))
            if check is not None and not check(p.value):
                return SetParametersResult(successful=False, reason=f"{p.name}={p.value!r} refused: {why}")
        return SetParametersResult(successful=True)


class Diagnostics:
    """Publishes one DiagnosticStatus for a node on /diagnostics."""

    def __init__(self, node, name: str) -> None:
        self.node, self.name = node, name
        self.pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def publish(self, level: bytes, message: str, values: Mapping[str, object]) -> None:
        status = diagnostic(f"{self.node.get_name()}: {self.name}", self.node.get_fully_qualified_name(), level,
                            message, values)
        self.pub.publish(diagnostic_array(self.node.get_clock().now().to_msg(), [status]))


def run_node(node_factory) -> None:
    """Standard main(): init, spin (multi-threaded when the node asks for it), clean exit on SIGINT.
    A node whose parameters are refused exits with status 2 and the reason."""
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    rclpy.init(args=sys.argv)
    try:
        node = node_factory()
    except ValueError as exc:
        print(f"[FATAL] {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(2)
    executor = MultiThreadedExecutor(num_threads=3) if getattr(node, "multi_threaded", False) else None
    try:
        if executor is not None:
            executor.add_node(node)
            executor.spin()
        else:
            rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        close = getattr(node, "close", None)
        if close is not None:
            close()
        node.destroy_node()
        rclpy.try_shutdown()
