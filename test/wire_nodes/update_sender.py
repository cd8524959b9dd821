#!/usr/bin/env python3
"""Wire-test node: publishes one multi-MB ModelUpdate and one SampleBatch once the receiver is matched."""
import sys
import uuid
from pathlib import Path

import rclpy
from rclpy.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_payloads import frames, png, update_tensors  # noqa: E402

from eclm_ros.core.tensor_codec import pack  # noqa: E402
from eclm_ros.msg import EncodedFrame, ModelUpdate, SampleBatch  # noqa: E402
from eclm_ros.ros.ros_io import RELIABLE_QOS, UPDATE_QOS, bundle_to_msg  # noqa: E402


class UpdateSender(Node):
    def __init__(self) -> None:
        super().__init__("wire_sender")
        self.seed = self.declare_parameter("seed", 1).value
        self.megabytes = self.declare_parameter("payload_mb", 5.0).value
        self.frame_count = self.declare_parameter("frames", 4).value
        self.update_pub = self.create_publisher(ModelUpdate, "model_updates", UPDATE_QOS)
        self.sample_pub = self.create_publisher(SampleBatch, "samples", RELIABLE_QOS)
        self.sent = False
        self.timer = self.create_timer(0.2, self.on_timer)

    def on_timer(self) -> None:
        if self.sent or self.sample_pub.get_subscription_count() == 0 \
                or self.update_pub.get_subscription_count() == 0:
            return
        update = ModelUpdate(target_edge="edge_1", update_id=uuid.uuid4().hex, version=2, base_version=1,
                             kind=ModelUpdate.KIND_FULL, chunk_index=0, chunk_count=1)
        update.header.stamp = self.get_clock().now().to_msg()
        bundle_to_msg(pack(update_tensors(self.seed, self.megabytes), compress=False), update.bundle)
        self.update_pub.publish(update)
        imgs = frames(self.seed, self.frame_count)
        batch = SampleBatch(edge_id="edge_1", batch_seq=1, model_version=1, encoding="png", num_classes=10)
        batch.frames = [EncodedFrame(width=28, height=28, channels=1, data=png(i)) for i in imgs]
        batch.stamps = [update.header.stamp] * len(imgs)
        batch.predicted_class = list(range(len(imgs)))
        batch.entropy = [0.5] * len(imgs)
        batch.probabilities = [0.1] * (10 * len(imgs))
        self.sample_pub.publish(batch)
        self.sent = True
        self.get_logger().info(f"sent a {update.bundle.raw_size} byte update and {len(imgs)} frames")


def main() -> None:
    rclpy.init()
    node = UpdateSender()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
