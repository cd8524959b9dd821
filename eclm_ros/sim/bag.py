"""A recorded rosbag2 (.mcap or .db3) as the camera: the messages of one sensor_msgs/Image or CompressedImage
topic, in recorded order, with their recording times. Read with the ``rosbags`` library (no ROS needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from .data import DataNotFoundError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")


class BagSource:
    """Camera messages of ``topic`` ('' = the bag's only image topic, or the first of several) from a bag
    directory or a single .mcap / .db3 file. Iterating yields (recording time in ns, message); a message has
    the fields of its ROS type (``encoding``, ``data``, ... or ``format``, ``data``)."""

    def __init__(self, path: str | Path, topic: str = "") -> None:
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        if not self.path.exists():
            raise DataNotFoundError(f"no bag at {self.path}: record one with 'ros2 bag record -s mcap <topic>'")
        try:
            self.reader = AnyReader([self.path])
            self.reader.open()
        except Exception as exc:  # rosbags raises its own ReaderError, and OSError, for unreadable bags
            raise DataNotFoundError(f"{self.path} is not a readable rosbag2 ({type(exc).__name__}: {exc})") from exc
        images = {c.topic: c for c in self.reader.connections if c.msgtype in IMAGE_TYPES and c.msgcount}
        if not images:
            found = sorted(f"{c.topic} ({c.msgtype}, {c.msgcount})" for c in self.reader.connections) or ["none"]
            self.reader.close()
            raise DataNotFoundError(f"{self.path} has no sensor_msgs/Image or CompressedImage topic with messages "
                                    f"(topics: {', '.join(found)}): record the camera's topic")
        if topic and topic not in images:
            self.reader.close()
            raise DataNotFoundError(f"{self.path} has no image topic {topic!r}; its image topics: "
                                    f"{', '.join(sorted(images))}")
        self.topic = topic or sorted(images)[0]
        self.connection = images[self.topic]
        self.count = self.connection.msgcount

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        for connection, timestamp, raw in self.reader.messages(connections=[self.connection]):
            yield timestamp, self.reader.deserialize(raw, connection.msgtype)

    def close(self) -> None:
        self.reader.close()
