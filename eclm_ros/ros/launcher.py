"""Start the node executables as real, separate processes (the demo, the tests), and always stop them; record
what the system publishes from inside the calling process."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable


def node_executable(name: str) -> list[str]:
    """The command that runs a node executable as ``ros2 run eclm_ros <name>`` would (the colcon install)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        exe = Path(get_package_prefix("eclm_ros")) / "lib" / "eclm_ros" / name
    except PackageNotFoundError as exc:
        raise FileNotFoundError("eclm_ros is not built or its install/ is not sourced: run 'make setup' and "
                                "'source scripts/env.sh'") from exc
    if not exe.exists():
        raise FileNotFoundError(f"{exe} is missing: rebuild with 'make setup'")
    return [sys.executable, str(exe)]


class NodeProcess:
    """One node process: ``[executable, --ros-args, --params-file, yaml, ...]``, log captured to a file."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.command = command
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    @classmethod
    def python(cls, script: Path | str, params: Path, log: Path, *ros_args: str,
               env: dict[str, str] | None = None) -> "NodeProcess":
        return cls([sys.executable, str(script), "--ros-args", "--params-file", str(params), *ros_args], log, env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        """The process's log so far (also after it was stopped)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (a clean shutdown), then SIGKILL for the whole process group if it hangs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: the process dies without any chance to clean up (a crashed machine)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def clean_shared_memory() -> None:
    """Free the Fast DDS shared-memory segments of node processes that died without closing them (SIGKILLed
    nodes: each segment holds 64 MB of RAM until it is removed; a full test suite left ~600)."""
    if shutil.which("fastdds"):
        subprocess.run(["fastdds", "shm", "clean"], capture_output=True, timeout=120, check=False)


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Poll until ``predicate()`` is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Recorder:
    """An rclpy node inside the calling process that records what the system publishes (spun on a thread)."""

    def __init__(self, subscriptions: dict[str, tuple[type, object]]) -> None:
        import threading

        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"eclm_recorder_{os.getpid()}", context=self.context)
        self.received: dict[str, list] = {topic: [] for topic in subscriptions}
        self.receive_ns: dict[str, list[int]] = {topic: [] for topic in subscriptions}  # wall clock, per message
        for topic, (msg_type, qos) in subscriptions.items():
            self.node.create_subscription(msg_type, topic, self._keeper(topic), qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _keeper(self, topic: str):
        received, stamps = self.received[topic], self.receive_ns[topic]

        def keep(msg) -> None:
            stamps.append(time.time_ns())
            received.append(msg)
        return keep

    def timed(self, topic: str) -> list[tuple[int, object]]:
        """(receive time ns, message) of every message of ``topic`` so far."""
        return list(zip(self.receive_ns[topic], self.received[topic]))

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def publisher(self, msg_type, topic: str, qos):
        return self.node.create_publisher(msg_type, topic, qos)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        import rclpy

        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)
