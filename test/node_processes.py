"""Test helpers: whether ROS is usable here, and the launcher's process and recorder classes."""
from pathlib import Path

from eclm_ros.launcher import NodeProcess, Recorder, wait_for

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "NodeProcess", "Recorder", "ros_available", "wait_for"]


def ros_available() -> str | None:
    """None when rclpy and the built interfaces import, else the reason (for pytest.skip)."""
    try:
        import rclpy  # noqa: F401

        import eclm_ros.msg  # noqa: F401
    except ImportError as exc:
        return f"ROS 2 or the built eclm_ros interfaces are missing ({exc}); run 'make setup'"
    return None
