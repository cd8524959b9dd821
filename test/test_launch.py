"""The launch files, run for real: each in its own process with launch.LaunchService (launch_runner.py, as
`ros2 launch` would), nodes over DDS, quick models. They come up, talk (predictions, registrations with the cloud
named by the launch arguments), keep or set the DDS profile as asked, and stop cleanly on SIGINT."""
import shutil
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest
import yaml

from node_processes import NodeProcess, Recorder, diagnostic_values, model_params, ros_available, wait_for

RUNNER = Path(__file__).parent / "launch_runner.py"
PROFILE = "FASTDDS_DEFAULT_PROFILES_FILE"


def _launch_missing() -> str | None:
    if ros_available() is not None:
        return ros_available()
    try:
        import composition_interfaces.srv  # noqa: F401
        import launch  # noqa: F401
        import launch_ros  # noqa: F401
    except ImportError as exc:
        return (f"the ROS 2 launch packages are missing ({exc}): put the shared ros2-src beside the repository "
                "(../shared/ros2-src) and run 'make setup'")
    return None


pytestmark = pytest.mark.skipif(_launch_missing() is not None, reason=str(_launch_missing()))


class Launches:
    """Launch files started as separate processes, with one params_file pointing the nodes at the quick models."""

    def __init__(self, tmp: Path, cache: Path) -> None:
        from eclm_ros.core.signing import KeyRing

        self.tmp, self.procs = tmp, []
        self.keys = KeyRing(tmp / "keys")  # the cloud machine's `eclm-ros keys init robot1 robot2`
        self.keys.init_cloud()
        for edge_id in ("robot1", "robot2"):
            self.keys.enrol(edge_id)
        self.params_file = tmp / "params.yaml"
        params = {
            "edge_learner": {**model_params(cache, "edge_learner"), "register_period_s": 1.0, "upload_batch": 8},
            "cloud_coordinator": model_params(cache, "cloud_coordinator"),
            "camera_stream": {"rate_hz": 20.0},
            "bandwidth_monitor": {"probe_period_s": 0.5},
        }
        self.params_file.write_text(yaml.safe_dump({f"/**/{n}": {"ros__parameters": p} for n, p in params.items()}))

    def start(self, launch_file: str, **arguments: str) -> NodeProcess:
        args = {"params_file": str(self.params_file), "keys_dir": str(self.keys.root), **arguments}
        log = self.tmp / f"{launch_file}-{len(self.procs)}.log"
        proc = NodeProcess([sys.executable, str(RUNNER), launch_file, *(f"{k}:={v}" for k, v in args.items())], log)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {' '.join(p.command[2:4])}\n{p.log_path.read_text(errors='replace')[-4000:]}"
                         for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.stop(timeout=30)


@pytest.fixture
def launches(tmp_path, quick_cache):
    runs = Launches(tmp_path, quick_cache)
    yield runs
    runs.stop()
    print(runs.logs())  # pytest shows it for a failed test


def _node_environments(proc: NodeProcess) -> dict[str, dict[str, str]]:
    """Each node process the launch started: its executable's name -> its environment."""
    envs = {}
    for child in psutil.Process(proc.proc.pid).children(recursive=True):
        try:
            name = next((Path(a).name for a in child.cmdline() if "/lib/eclm_ros/" in a), None)
            if name is not None:
                envs[name] = child.environ()
        except psutil.Error:
            continue
    return envs


def _assert_clean_stop(proc: NodeProcess, nodes: int) -> None:
    """SIGINT to the launch (as Ctrl-C would): the launch exits 0 and every node finished cleanly (exit 0)."""
    rc = proc.stop(timeout=30)
    log = proc.log_path.read_text(errors="replace")
    assert rc == 0, log[-4000:]
    assert log.count("process has finished cleanly") == nodes, log[-4000:]
    assert "process has died" not in log, log[-4000:]


SIM_START_S = 1000  # simulated time on /clock: far below any wall-clock stamp


def _frames(recorder: Recorder, topics: dict[str, str]):
    """Publishers of random 28x28 camera frames (``topics``: topic -> "raw" | "compressed") and of /clock, and
    ``feed()``, which sends a few frames to each topic with simulated time advancing, and returns True (to sit
    inside a wait_for condition)."""
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    from eclm_ros.ros.ros_io import RELIABLE_QOS, SENSOR_QOS

    pubs = {t: (kind, recorder.publisher(CompressedImage if kind == "compressed" else Image, t, SENSOR_QOS))
            for t, kind in topics.items()}
    clock = recorder.publisher(Clock, "/clock", RELIABLE_QOS)
    rng = np.random.default_rng(0)
    t0 = time.monotonic()

    def feed(n: int = 3) -> bool:
        for _ in range(n):
            sim = SIM_START_S + time.monotonic() - t0
            clock.publish(Clock(clock=Time(sec=int(sim), nanosec=int(sim % 1 * 1e9))))
            gray = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            for kind, pub in pubs.values():
                if kind == "compressed":
                    pub.publish(CompressedImage(format="mono8; jpeg compressed mono8",
                                                data=cv2.imencode(".jpg", gray)[1].tobytes()))
                else:
                    pub.publish(Image(height=28, width=28, encoding="mono8", step=28, data=gray.tobytes()))
            time.sleep(0.03)
        return True

    return feed


def _recorder(*prediction_topics: str) -> Recorder:
    from diagnostic_msgs.msg import DiagnosticArray

    from eclm_ros.msg import Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS

    return Recorder({**{t: (Prediction, RELIABLE_QOS) for t in prediction_topics},
                     "/diagnostics": (DiagnosticArray, 50)})


def _diagnostics_stamps(recorder: Recorder, hardware_id: str) -> list[int]:
    """The seconds of every /diagnostics array a node sent (its clock: wall or simulated)."""
    return [a.header.stamp.sec for a in recorder.received["/diagnostics"]
            if any(s.hardware_id == hardware_id for s in a.status)]


def _cloud_knows(recorder: Recorder, hardware_id: str, *edges: str) -> bool:
    """The cloud coordinator named ``hardware_id`` reports a model version for each of ``edges`` (registered)."""
    for arr in reversed(recorder.received["/diagnostics"]):
        if any(s.hardware_id == hardware_id for s in arr.status):
            values = diagnostic_values([arr], "cloud_coordinator")
            return all(f"version/{e}" in values for e in edges)
    return False


def test_demo_launch_runs_one_robot_and_its_cloud_in_the_namespaces_it_is_given(launches, tmp_path, monkeypatch):
    from eclm_ros.ros.launch_common import config_path

    own_profile = tmp_path / "my_profile.xml"
    shutil.copy(config_path("fastdds_profile.xml"), own_profile)
    monkeypatch.setenv(PROFILE, str(own_profile))  # the user's own profile: the launch must keep it
    recorder = _recorder("/robot1/predictions")
    try:
        demo = launches.start("demo.launch.py", cloud_namespace="/eclm_demo", edge_id="scout7", log_level="info")
        preds = recorder.received["/robot1/predictions"]
        wait_for(lambda: len(preds) >= 20, 120, "20 predictions on /robot1/predictions (camera -> edge)")
        wait_for(lambda: _cloud_knows(recorder, "/eclm_demo/cloud_coordinator", "scout7"), 60,
                 "the cloud in /eclm_demo reporting edge scout7 (edge_id argument) as registered")
        envs = _node_environments(demo)
    finally:
        recorder.close()
    assert sorted(envs) == ["bandwidth_monitor", "camera_stream", "cloud_coordinator", "edge_learner"], envs
    assert launches.keys.edge_public("scout7").is_file()  # the demo launch enrolled its robot's edge id
    assert {env[PROFILE] for env in envs.values()} == {str(own_profile)}
    _assert_clean_stop(demo, nodes=4)


def test_two_robots_in_their_namespaces_one_compressed_one_brought_up_by_the_launch(launches, tmp_path, monkeypatch):
    from eclm_ros.ros.launch_common import config_path

    monkeypatch.delenv(PROFILE, raising=False)  # no profile of the user's: the launch sets the shipped one
    asked = tmp_path / "asked_profile.xml"
    shutil.copy(config_path("fastdds_profile.xml"), asked)
    recorder = _recorder("/robot1/predictions", "/robot2/predictions")
    try:
        cloud = launches.start("cloud.launch.py", cloud_namespace="/eclm_two", lifecycle="launch")
        robot1 = launches.start("edge.launch.py", namespace="robot1", cloud_namespace="/eclm_two", log_level="warn")
        robot2 = launches.start("edge.launch.py", namespace="robot2", cloud_namespace="/eclm_two",
                                image_transport="compressed", dds_profile=str(asked), use_sim_time="true",
                                lifecycle="launch")
        feed = _frames(recorder, {"/robot1/camera/image_raw": "raw", "/robot2/camera/image_raw/compressed":
                                  "compressed"})
        received = recorder.received
        wait_for(lambda: feed() and len(received["/robot1/predictions"]) >= 10
                 and len(received["/robot2/predictions"]) >= 10, 120,
                 "predictions from robot1 (raw Image) and robot2 (jpeg CompressedImage)")
        wait_for(lambda: feed() and _cloud_knows(recorder, "/eclm_two/cloud_coordinator", "robot1", "robot2"), 60,
                 "the cloud reporting both edges, named by their namespaces")
        wait_for(lambda: feed() and _diagnostics_stamps(recorder, "/robot2/edge_learner"), 30,
                 "diagnostics from robot2's edge learner")
        profiles = {p: {e[PROFILE] for e in _node_environments(p).values()} for p in (cloud, robot1, robot2)}
    finally:
        recorder.close()
    shipped = config_path("fastdds_profile.xml")
    assert profiles == {cloud: {shipped}, robot1: {shipped}, robot2: {str(asked)}}, profiles
    # use_sim_time: robot2's edge learner stamps with /clock, robot1's with the wall clock
    assert max(_diagnostics_stamps(recorder, "/robot2/edge_learner")) < SIM_START_S + 600
    assert min(_diagnostics_stamps(recorder, "/robot1/edge_learner")) > 10 ** 9
    # log_level: robot1 (warn) leaves out the INFO line robot2 (info) writes when it starts serving
    assert "edge robot2 serving" in robot2.output() and "serving" not in robot1.output()
    # lifecycle:=launch: the launch configured and activated the cloud and robot2's edge (managed nodes)
    assert "cloud coordinator serving" in cloud.output() and "waiting for a lifecycle manager" in robot2.output()
    _assert_clean_stop(robot2, nodes=2)
    _assert_clean_stop(robot1, nodes=2)
    _assert_clean_stop(cloud, nodes=1)
