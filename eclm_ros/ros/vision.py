"""Standard outputs beside eclm_ros's own ``Prediction``, so a consumer needs no eclm_ros types: a
``vision_msgs/Classification`` per frame (every class score, ``class_id`` the class index as a string, the
frame's header) and the label list once as ``vision_msgs/LabelInfo`` on a transient-local topic, so a consumer
that starts later still gets it (vision_msgs' convention for ``label_info``).

vision_msgs is a run dependency (``ros-<distro>-vision-msgs``); a machine without it still serves
``Prediction`` and says once why the standard outputs are off.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from .ros_io import RELIABLE_QOS

try:
    from vision_msgs.msg import Classification, LabelInfo, ObjectHypothesis, VisionClass
except ImportError as exc:  # no vision_msgs on this machine
    Classification = None
    MISSING = f"vision_msgs is not installed ({exc}): publishing predictions only; install ros-<distro>-vision-msgs"
else:
    MISSING = ""

#: The label list: reliable, latched (transient local), one message.
LABEL_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)


class VisionOutputs:
    """The ``classification`` and ``label_info`` publishers of one model's labels."""

    def __init__(self, node: Node, labels: Sequence[str]) -> None:
        self.enabled = Classification is not None
        if not self.enabled:
            node.get_logger().warning(MISSING)
            return
        self.msg = Classification(results=[ObjectHypothesis(class_id=str(i)) for i in range(len(labels))])
        self.pub = node.create_publisher(Classification, "classification", RELIABLE_QOS)
        info = LabelInfo(class_map=[VisionClass(class_id=i, class_name=name) for i, name in enumerate(labels)])
        info.header.stamp = node.get_clock().now().to_msg()
        self.label_pub = node.create_publisher(LabelInfo, "label_info", LABEL_QOS)
        self.label_pub.publish(info)

    def publish(self, header, probs: np.ndarray) -> None:
        """Every class score of one frame, under the frame's header (the message is reused, not rebuilt)."""
        if not self.enabled:
            return
        for hypothesis, score in zip(self.msg.results, probs.tolist()):
            hypothesis.score = score
        self.msg.header = header
        self.pub.publish(self.msg)
