"""What the system published, as a rosbag2 (.mcap) a user opens with `ros2 bag info`, Foxglove or rosbags.

The messages a ``launcher.Recorder`` received are written as ROS serialises them (CDR), with their receive
times, through the ``rosbags`` writer; eclm_ros's own types are registered from the package's .msg files, so
the bag carries their definitions and needs no eclm_ros install to be read.
"""
from __future__ import annotations

from pathlib import Path


def _eclm_types() -> dict:
    from ament_index_python.packages import get_package_share_directory
    from rosbags.typesys import get_types_from_msg

    types: dict = {}
    for path in sorted((Path(get_package_share_directory("eclm_ros")) / "msg").glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"eclm_ros/msg/{path.stem}"))
    return types


def ros_type(msg: object) -> str:
    """'pkg/msg/Name' of an rclpy message (its Python module is pkg.msg._name)."""
    return f"{type(msg).__module__.split('.')[0]}/msg/{type(msg).__name__}"


def write_bag(path: Path | str, messages: dict[str, list[tuple[int, object]]]) -> int:
    """Write ``{topic: [(receive time ns, rclpy message), ...]}`` to a new bag directory ``path`` (mcap), in
    time order across topics; returns the number of messages written. Topics without messages are left out."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(_eclm_types())
    with Writer(Path(path), version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {topic: writer.add_connection(topic, ros_type(msgs[0][1]), typestore=store)
                       for topic, msgs in messages.items() if msgs}
        ordered = sorted((t, topic, i) for topic, msgs in messages.items() if msgs for i, (t, _) in enumerate(msgs))
        for t, topic, i in ordered:
            writer.write(connections[topic], t, serialize_message(messages[topic][i][1]))
    return len(ordered)
