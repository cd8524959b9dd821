"""camera_stream: a simulated camera over the shifting world (or an image folder / video / webcam / rosbag2).

Publishes sensor_msgs/Image on `image` (sensor-data QoS) at `rate_hz`, and, for evaluation only, the true
class of each frame on `ground_truth` with the same header.
"""
import cv2
import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from ...core.health import OK, Health
from ...msg import GroundTruth
from ...sim.bag import BagSource
from ...sim.data import ImageFolder, VideoSource, load_fashion_mnist
from ...sim.world import WorldStream, parse_schedule
from ..params import CAMERA_STREAM, NodeParameters
from ..ros_io import (RELIABLE_QOS, SENSOR_QOS, Diagnostics, ImageError, frame_from_msg, numpy_to_image, period_s,
                      run_node, set_period)


class CameraStream(Node):
    def __init__(self) -> None:
        super().__init__("camera_stream")
        p = self.params = NodeParameters(self, CAMERA_STREAM, self.on_parameter)
        size = p["size"]
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"parameter size={list(size)!r} refused: [width, height], two positive integers")
        self.source = p["source"]
        if self.source == "world":
            x, y = load_fashion_mnist("test")
            self.world = WorldStream(x, y, parse_schedule(p["schedule"]), p["seed"], p["world"])
        elif self.source == "folder":
            x, y = ImageFolder(p["path"], grayscale=False).arrays((size[1], size[0]))
            self.world = WorldStream(x, y, parse_schedule(p["schedule"]), p["seed"], p["world"])
        elif self.source == "bag":
            self.world = None
            self.bag = BagSource(p["path"], p["bag_topic"])
            self.video = iter(self.bag)
            self.clock_pub = self.create_publisher(Clock, "/clock", 10) if p["publish_clock"] else None
            self.get_logger().info(f"replaying {self.bag.count} messages of {self.bag.topic} from {p['path']}")
        else:
            self.world = None
            self.video = iter(VideoSource(p["path"]))
        self.image_pub = self.create_publisher(Image, "image", SENSOR_QOS)
        self.truth_pub = self.create_publisher(GroundTruth, "ground_truth", RELIABLE_QOS)
        self.diagnostics = Diagnostics(self, self.settings)
        self.index = 0
        self.skipped = 0  # bag messages that did not decode
        self._last_recorded: int | None = None
        self._recorded_stamp = (0, 0)
        self.msg = Image()
        self.timer = self.create_timer(1.0 / p["rate_hz"], self.on_timer)
        self.create_timer(1.0, lambda: self.diagnostics.publish([Health(
            "camera", OK, "streaming", {"frames": self.index, "source": self.source,
                                        "skipped": self.skipped})]))
        self.get_logger().info(f"publishing {self.source} frames at {p['rate_hz']} Hz, {size[0]}x{size[1]} "
                               f"{p['encoding']}")

    def settings(self) -> dict:
        """The rate as the timer holds it; encoding, frame_id and max_frames are read for every frame."""
        return {"rate_hz": 1.0 / period_s(self.timer),
                **{k: self.params[k] for k in ("encoding", "frame_id", "max_frames")}}

    def on_parameter(self, name: str, value) -> None:
        if name == "rate_hz":
            set_period(self.timer, 1.0 / value)

    def _bag_frame(self):
        """The next frame of the bag that decodes (one that does not is counted and skipped), its recorded
        header stamp; at the recorded pace the timer then waits for the message after it."""
        for recorded_ns, msg in self.video:
            try:
                img, order = frame_from_msg(msg)
            except ImageError as exc:
                self.skipped += 1
                self.get_logger().warning(f"bag message at {recorded_ns} ns skipped: {exc}", throttle_duration_sec=5)
                continue
            if img.ndim == 3 and order == "bgr":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if self.params["bag_timing"]:
                if self._last_recorded is not None:
                    set_period(self.timer, max(1e-3, (recorded_ns - self._last_recorded) / 1e9))
                self._last_recorded = recorded_ns
            if self.clock_pub is not None:
                self.clock_pub.publish(Clock(clock=Time(sec=recorded_ns // 10 ** 9, nanosec=recorded_ns % 10 ** 9)))
            stamp = msg.header.stamp
            return img, (int(stamp.sec), int(stamp.nanosec)) if stamp.sec or stamp.nanosec else (
                recorded_ns // 10 ** 9, recorded_ns % 10 ** 9)
        self.bag.close()
        return None, None

    def _frame(self):
        if self.source == "bag":
            img, self._recorded_stamp = self._bag_frame()
            return img, None
        if self.world is None:
            return next(self.video, None), None
        if self.world.schedule.locate(self.index) is None:
            return None, None
        return self.world.frame(self.index)

    def on_timer(self) -> None:
        max_frames, encoding = self.params["max_frames"], self.params["encoding"]
        if max_frames and self.index >= max_frames:
            return
        if self.source == "bag" and self.index == 0 and \
                self.image_pub.get_subscription_count() < self.params["wait_for_subscribers"]:
            return  # a recording is finite: its replay starts once its subscribers are matched
        frame, truth = self._frame()
        if frame is None:
            self.timer.cancel()
            self.get_logger().info(f"stream ended after {self.index} frames")
            return
        img = frame if isinstance(frame, np.ndarray) else frame.image
        w, h = self.params["size"]
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if encoding == "mono8" and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        elif encoding != "mono8":
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img
            img = img[:, :, ::-1] if encoding == "bgr8" else img
        msg = numpy_to_image(np.ascontiguousarray(img), encoding, self.msg)
        if self.source == "bag" and self.params["publish_clock"]:
            msg.header.stamp = Time(sec=self._recorded_stamp[0], nanosec=self._recorded_stamp[1])
        else:
            msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.params["frame_id"]
        self.image_pub.publish(msg)
        if truth is not None:
            self.truth_pub.publish(GroundTruth(header=msg.header, frame_index=self.index, class_id=truth.label,
                                               environment=truth.environment, segment_index=truth.segment_index))
        self.index += 1

def main() -> None:
    run_node(CameraStream)


if __name__ == "__main__":
    main()
