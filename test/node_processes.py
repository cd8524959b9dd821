"""Test helpers: whether ROS is usable here, and the launcher's process and recorder classes."""
from pathlib import Path

from eclm_ros.ros.launcher import NodeProcess, Recorder, wait_for

REPO = Path(__file__).resolve().parents[1]
__all__ = ["REPO", "NodeProcess", "Recorder", "diagnostic_values", "model_params", "ros_available", "wait_for"]


def model_params(cache: Path, node: str) -> dict:
    """The model_path parameter that points a node at the quick models trained into ``cache``."""
    from eclm_ros.core.checkpoint import default_path

    return {"model_path": str(default_path("cloud" if node == "cloud_coordinator" else "edge", True, cache))}


def diagnostic_values(arrays: list, node: str, concern: str = "") -> dict[str, str]:
    """Every key/value a node reported in its newest /diagnostics array (one status per concern), or only
    those of one ``concern`` (e.g. "settings")."""
    prefix = f"{node}: {concern}" if concern else f"{node}:"
    for arr in reversed(arrays):
        statuses = [s for s in arr.status if (s.name == prefix if concern else s.name.startswith(prefix))]
        if statuses:
            return {kv.key: kv.value for s in statuses for kv in s.values}
    return {}


def ros_available() -> str | None:
    """None when rclpy and the built interfaces import, else the reason (for pytest.skip)."""
    try:
        import rclpy  # noqa: F401

        import eclm_ros.msg  # noqa: F401
    except ImportError as exc:
        return f"ROS 2 or the built eclm_ros interfaces are missing ({exc}); run 'make setup'"
    return None
