"""camera_stream: a simulated camera over the shifting world (or an image folder / video / webcam).

Publishes sensor_msgs/Image on `image` (sensor-data QoS) at `rate_hz`, and, for evaluation only, the true
class of each frame on `ground_truth` with the same header.
"""
import cv2
import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import Image

from eclm_ros.core.data import ImageFolder, VideoSource, load_fashion_mnist
from eclm_ros.core.world import WorldStream, parse_schedule
from eclm_ros.msg import GroundTruth
from eclm_ros.ros_io import (IMAGE_CHANNELS, RELIABLE_QOS, SENSOR_QOS, Diagnostics, NodeParameters, numpy_to_image,
                            run_node)

DEFAULT_SCHEDULE = "clean:300,fog@3:600,contrast@3:600,gaussian_noise@3:600,motion_blur@3:600*"


class CameraStream(Node):
    def __init__(self) -> None:
        super().__init__("camera_stream")
        p = NodeParameters(self)
        self.source = p.declare("source", "world", "world (Fashion-MNIST + schedule), folder, or video",
                                lambda v: v in ("world", "folder", "video"), "one of world, folder, video")
        schedule = p.declare("schedule", DEFAULT_SCHEDULE, "environment schedule: name[@severity]:frames[/transition],"
                             " comma-separated, '*' repeats", lambda v: bool(v.strip()), "must not be empty")
        self.seed = p.declare("seed", 0, "stream seed (same seed, same frames)")
        rate = p.declare("rate_hz", 30.0, "frames per second", lambda v: 0 < v <= 1000, "must be in (0, 1000]")
        self.size = p.declare("size", [28, 28], "published frame [width, height] in pixels",
                              lambda v: len(v) == 2 and min(v) > 0, "two positive integers")
        self.encoding = p.declare("encoding", "mono8", "Image encoding", lambda v: v in IMAGE_CHANNELS,
                                  "mono8, rgb8 or bgr8")
        path = p.declare("path", "", "image folder or video file (or webcam index) for source folder/video")
        self.frame_id = p.declare("frame_id", "camera", "header.frame_id")
        self.max_frames = p.declare("max_frames", 0, "stop publishing after this many frames (0 = never)",
                                    lambda v: v >= 0, "must be >= 0")
        if self.source == "world":
            x, y = load_fashion_mnist("test")
            self.world = WorldStream(x, y, parse_schedule(schedule), self.seed)
        elif self.source == "folder":
            x, y = ImageFolder(path).arrays()
            self.world = WorldStream(x, y, parse_schedule(schedule), self.seed)
        else:
            self.world = None
            self.video = iter(VideoSource(path))
        self.image_pub = self.create_publisher(Image, "image", SENSOR_QOS)
        self.truth_pub = self.create_publisher(GroundTruth, "ground_truth", RELIABLE_QOS)
        self.diagnostics = Diagnostics(self, "camera")
        self.index = 0
        self.msg = Image()
        self.timer = self.create_timer(1.0 / rate, self.on_timer)
        self.create_timer(1.0, self.on_diagnostics)
        self.get_logger().info(f"publishing {self.source} frames at {rate} Hz, {self.size[0]}x{self.size[1]} "
                               f"{self.encoding}")

    def _frame(self):
        if self.world is None:
            return next(self.video, None), None
        if self.world.schedule.locate(self.index) is None:
            return None, None
        return self.world.frame(self.index)

    def on_timer(self) -> None:
        if self.max_frames and self.index >= self.max_frames:
            return
        frame, truth = self._frame()
        if frame is None:
            self.timer.cancel()
            self.get_logger().info(f"stream ended after {self.index} frames")
            return
        img = frame if isinstance(frame, np.ndarray) else frame.image
        w, h = self.size
        if img.shape[:2] != (h, w):
            img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.encoding == "mono8" and img.ndim == 3:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        elif self.encoding != "mono8":
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB) if img.ndim == 2 else img
            img = img[:, :, ::-1] if self.encoding == "bgr8" else img
        msg = numpy_to_image(np.ascontiguousarray(img), self.encoding, self.msg)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.frame_id
        self.image_pub.publish(msg)
        if truth is not None:
            self.truth_pub.publish(GroundTruth(header=msg.header, frame_index=self.index, class_id=truth.label,
                                               environment=truth.environment, segment_index=truth.segment_index))
        self.index += 1

    def on_diagnostics(self) -> None:
        self.diagnostics.publish(DiagnosticStatus.OK, "streaming", {"frames": self.index, "source": self.source})


def main() -> None:
    run_node(CameraStream)


if __name__ == "__main__":
    main()
