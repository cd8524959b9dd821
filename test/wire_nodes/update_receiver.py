#!/usr/bin/env python3
"""Wire-test node: receives the ModelUpdate and SampleBatch, decodes them, writes what it got as JSON."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.node import Node

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wire_payloads import sha  # noqa: E402

from eclm_ros.core.tensor_codec import unpack  # noqa: E402
from eclm_ros.msg import ModelUpdate, SampleBatch  # noqa: E402
from eclm_ros.ros.ros_io import RELIABLE_QOS, UPDATE_QOS, msg_to_bundle  # noqa: E402


class UpdateReceiver(Node):
    def __init__(self) -> None:
        super().__init__("wire_receiver")
        self.result_file = Path(self.declare_parameter("result_file", "").value)
        self.result: dict = {}
        self.create_subscription(ModelUpdate, "model_updates", self.on_update, UPDATE_QOS)
        self.create_subscription(SampleBatch, "samples", self.on_samples, RELIABLE_QOS)

    def on_update(self, msg: ModelUpdate) -> None:
        tensors = unpack(msg_to_bundle(msg.bundle))
        self.result["update"] = {"version": msg.version, "kind": msg.kind, "bytes": len(msg.bundle.payload),
                                 "tensors": {k: sha(v) for k, v in tensors.items()}}
        self.maybe_finish()

    def on_samples(self, msg: SampleBatch) -> None:
        imgs = [cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_UNCHANGED) for f in msg.frames]
        self.result["samples"] = {"edge_id": msg.edge_id, "frames": [sha(i) for i in imgs],
                                  "predicted_class": list(msg.predicted_class)}
        self.maybe_finish()

    def maybe_finish(self) -> None:
        if {"update", "samples"} <= set(self.result):
            tmp = self.result_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.result))
            tmp.rename(self.result_file)
            self.get_logger().info(f"received everything, wrote {self.result_file}")


def main() -> None:
    rclpy.init()
    node = UpdateReceiver()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
