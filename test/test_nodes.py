"""The ROS 2 system as separate node processes over DDS (quick models): the loop closes and helps, bad input is
refused while serving goes on, and the edge survives the cloud's death and resyncs after it returns."""
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from node_processes import NodeProcess, Recorder, diagnostic_values, model_params, ros_available, wait_for

from eclm_ros.ros.launcher import node_executable

pytestmark = pytest.mark.skipif(ros_available() is not None, reason=str(ros_available()))

SCHEDULE = "contrast@5:100000"


class System:
    """Writes each node's parameter YAML and starts node executables as separate processes."""

    def __init__(self, tmp: Path, cache: Path) -> None:
        from eclm_ros.core.signing import KeyRing

        self.tmp, self.cache = tmp, cache
        self.ring = KeyRing(tmp / "keys")  # as `eclm-ros keys init` leaves it: the nodes are secure by default
        self.ring.init_cloud()
        self.procs: list[NodeProcess] = []
        keys = {"keys_dir": str(self.ring.root)}
        self.params = {
            "cloud_coordinator": {**model_params(cache, "cloud_coordinator"), **keys,
                                  "state_dir": str(tmp / "state"), "save_period_s": 1.0},
            "edge_learner": {**model_params(cache, "edge_learner"), **keys,
                             "upload_batch": 8, "upload_ratio": 0.3, "register_period_s": 2.0},
            "camera_stream": {"schedule": SCHEDULE, "seed": 3, "rate_hz": 40.0},
            "bandwidth_monitor": {"probe_period_s": 0.5},
        }

    def start(self, name: str, namespace: str) -> NodeProcess:
        if name == "edge_learner":  # enrolled under the id its namespace gives it
            from eclm_ros.ros.links import edge_id_from

            self.ring.enrol(edge_id_from(namespace, self.params[name].get("edge_id", "")))
        path = self.tmp / f"{name}-{len(self.procs)}.yaml"  # each process its own: they read it at start-up
        path.write_text(yaml.safe_dump({f"/**/{name}": {"ros__parameters": self.params[name]}}))
        proc = NodeProcess([*node_executable(name), "--ros-args", "-r", f"__ns:={namespace}",
                            "--params-file", str(path)], self.tmp / f"{name}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def start_loop(self) -> None:
        """The whole loop: the cloud coordinator, an edge learner and its camera."""
        self.start("cloud_coordinator", "/eclm")
        self.start("edge_learner", "/robot1")
        self.start("camera_stream", "/robot1")

    def logs(self) -> str:
        return "\n".join(f"--- {p.command[1]}\n{p.output()[-3000:]}" for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


@pytest.fixture
def system(tmp_path, quick_cache):
    s = System(tmp_path, quick_cache)
    yield s
    s.stop()


def _listener():
    from diagnostic_msgs.msg import DiagnosticArray

    from eclm_ros.msg import GroundTruth, Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS

    return Recorder({"/robot1/predictions": (Prediction, RELIABLE_QOS),
                     "/robot1/ground_truth": (GroundTruth, RELIABLE_QOS),
                     "/diagnostics": (DiagnosticArray, 50)})


def _edge_values(listener) -> dict[str, str]:
    return diagnostic_values(listener.received["/diagnostics"], "edge_learner")


def _stamp(header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


def test_loop_closes_and_beats_the_source_model(system, quick_model, to_tensor):
    from eclm_ros.sim.data import load_fashion_mnist
    from eclm_ros.sim.world import WorldStream, parse_schedule

    listener = _listener()
    try:
        system.start_loop()
        preds = listener.received["/robot1/predictions"]
        wait_for(lambda: sum(p.model_version >= 4 for p in preds) >= 300, 120,
                 "300 predictions from model version >= 4 (frames in, samples up, updates down)")
        truths = {_stamp(t.header): t for t in listener.received["/robot1/ground_truth"]}
    finally:
        listener.close()
    assert min(p.model_version for p in preds) <= 1 < max(p.model_version for p in preds)
    adapted = [(truths[_stamp(p.header)], p) for p in preds if p.model_version >= 4 and _stamp(p.header) in truths]
    assert len(adapted) >= 200, system.logs()
    x, y = load_fashion_mnist("test")
    stream = WorldStream(x, y, parse_schedule(SCHEDULE), seed=3)
    frames = np.stack([stream.frame(t.frame_index)[0].image for t, _ in adapted])
    assert all(t.class_id == stream.frame(t.frame_index)[1].label for t, _ in adapted[:20])
    source = quick_model("edge").model
    import torch

    with torch.no_grad():
        source_pred = source(to_tensor(frames)).argmax(1).numpy()
    labels = np.array([t.class_id for t, _ in adapted])
    edge_acc = float(np.mean([p.class_id == t.class_id for t, p in adapted]))
    source_acc = float(np.mean(source_pred == labels))
    assert edge_acc > source_acc + 0.05, f"edge {edge_acc:.3f} vs source {source_acc:.3f}"


def _image(data: bytes, step: int = 28, encoding: str = "mono8"):
    from sensor_msgs.msg import Image

    return Image(height=28, width=28, encoding=encoding, step=step, data=data)


def _camera(listener, seed: int = 0):
    """A publisher of random 28x28 mono8 frames on /robot1/image and ``feed(n)``, which sends n of them (and
    returns True, to sit inside a wait_for condition)."""
    from eclm_ros.ros.ros_io import SENSOR_QOS

    images = listener.publisher(type(_image(b"")), "/robot1/image", SENSOR_QOS)
    rng = np.random.default_rng(seed)

    def feed(n: int = 5) -> bool:
        for _ in range(n):
            images.publish(_image(rng.integers(0, 255, 784, dtype=np.uint8).tobytes()))
            time.sleep(0.02)
        return True

    return images, feed


def _signed_update(key, version: int, base: int, kind: int, tensors: dict, spec: str = "{}",
                   target: str = "robot1"):
    """A ModelUpdate as the cloud would publish it, signed with ``key``."""
    from eclm_ros.core.messages import UpdateHeader
    from eclm_ros.core.tensor_codec import pack
    from eclm_ros.core.updates import signature_for
    from eclm_ros.msg import ModelUpdate
    from eclm_ros.ros.ros_io import bundle_to_msg

    bundle = pack(tensors)
    header = UpdateHeader(target, uuid.uuid4().hex, version, base, kind, spec)
    msg = ModelUpdate(target_edge=target, update_id=header.update_id, version=version, base_version=base,
                      kind=kind, submodel_spec=spec, chunk_index=0, chunk_count=1)
    bundle_to_msg(bundle, msg.bundle)
    msg.signature_scheme, msg.key_id, sig = signature_for(header, bundle, key)
    msg.signature = sig
    return msg


def test_bad_input_is_refused_and_serving_goes_on(system):
    from eclm_ros.core.messages import KIND_FULL, KIND_NORM_AFFINE
    from eclm_ros.core.signing import generate_key, load_private_key
    from eclm_ros.msg import ModelUpdate
    from eclm_ros.ros.ros_io import UPDATE_QOS

    listener = _listener()
    try:
        cloud = system.start("cloud_coordinator", "/eclm")
        system.start("edge_learner", "/robot1")
        images, feed = _camera(listener)
        updates = listener.publisher(ModelUpdate, "/eclm/updates/robot1", UPDATE_QOS)
        preds = listener.received["/robot1/predictions"]

        def version() -> int:
            feed(5)
            return preds[-1].model_version if preds else 0

        wait_for(lambda: version() >= 1, 60, "the edge's first model version")
        cloud.kill()  # from here on only the test's updates reach the edge: the versions below stay what they say
        time.sleep(1.0)
        images.publish(_image(bytes(100)))  # data shorter than height x step
        images.publish(_image(bytes(784 * 4), step=112, encoding="32FC1"))  # unsupported encoding
        current = version()
        cloud_key = load_private_key(system.ring.cloud_private)

        def update(version: int, base: int, kind: int, target: str = "robot1", key=cloud_key, corrupt=False):
            msg = _signed_update(key, version, base, kind, {"x": np.ones(4, np.float32)}, target=target)
            if corrupt:
                msg.bundle.payload = bytes(reversed(bytes(msg.bundle.payload)))
            return msg

        for bad in (update(current + 1, current, KIND_NORM_AFFINE, corrupt=True),  # payload altered in transit
                    update(current, current - 1, KIND_NORM_AFFINE),  # stale
                    update(current + 50, 0, KIND_FULL, key=generate_key()),  # forged: another key
                    update(current + 1, current, KIND_NORM_AFFINE),  # signed, but for another structure
                    update(current + 1, current, KIND_NORM_AFFINE, target="robot9")):  # someone else's
            updates.publish(bad)
            time.sleep(0.3)  # a keep-last history of 4 would overwrite an update not yet delivered
        before = len(preds)

        def counted():
            feed(5)
            v = _edge_values(listener)
            return v and int(v["rejected_images"]) >= 2 and int(v["rejected_updates"]) >= 4 \
                and int(v["ignored_updates"]) >= 1
        wait_for(counted, 30, "the rejections on /diagnostics")
        feed(20)
        wait_for(lambda: len(preds) > before + 10, 10, "predictions after the bad input")
        assert preds[-1].model_version >= current  # still serving the last good model
    finally:
        listener.close()
    out = system.procs[1].output()
    for reason in ("data holds 100 bytes", "digest mismatch", "stale update",
                   "bad signature", "another sub-model structure"):
        assert reason in out, f"no log line with {reason!r}:\n{out[-4000:]}"


def test_edge_survives_cloud_death_and_resyncs(system):
    listener = _listener()
    try:
        cloud = system.start("cloud_coordinator", "/eclm")
        system.start("edge_learner", "/robot1")
        system.start("camera_stream", "/robot1")
        preds = listener.received["/robot1/predictions"]
        wait_for(lambda: preds and preds[-1].model_version >= 3, 90, "model version 3")
        time.sleep(1.5)  # let a state save happen (save_period_s 1)
        cloud.kill()
        at_kill = max(p.model_version for p in preds)
        count = len(preds)
        time.sleep(4)
        assert len(preds) > count + 50, "the edge stopped predicting when the cloud died"
        assert max(p.model_version for p in preds[count:]) == at_kill
        system.start("cloud_coordinator", "/eclm")
        wait_for(lambda: preds[-1].model_version > at_kill + 1, 90,
                 f"updates from the restarted cloud beyond version {at_kill}")
    finally:
        listener.close()


def test_one_cloud_serves_many_edges_and_reassembles_on_request(system, quick_model):
    import json

    from eclm_ros.core.models import spec_cost
    from eclm_ros.msg import DeviceProfile, EdgeStatus
    from eclm_ros.ros.ros_io import RELIABLE_QOS
    from eclm_ros.srv import ReassembleSubmodel

    listener = Recorder({"/eclm/edge_status": (EdgeStatus, RELIABLE_QOS)})
    try:
        system.start("cloud_coordinator", "/eclm")
        system.start("edge_learner", "/robot1")
        system.start("edge_learner", "/robot2")  # its edge id follows its namespace
        statuses = listener.received["/eclm/edge_status"]

        def latest(edge: str):
            return next((s for s in reversed(statuses) if s.edge_id == edge), None)

        wait_for(lambda: all(latest(e) and latest(e).model_version >= 1 for e in ("robot1", "robot2")), 90,
                 "both edges registered and serving the cloud's sub-model")
        cloud = quick_model("cloud").model
        whole = spec_cost(cloud, cloud.spec)[1]
        client = listener.node.create_client(ReassembleSubmodel, "/eclm/reassemble_submodel")
        assert client.wait_for_service(timeout_sec=20)

        def call(**profile):
            future = client.call_async(ReassembleSubmodel.Request(edge_id="robot1", reason="budget",
                                                                  profile=DeviceProfile(**profile)))
            return wait_for(lambda: future.done() and future.result(), 60, "the re-assembly answer")

        def modules(edge: str) -> list[int]:
            return [len(m) for m in json.loads(latest(edge).submodel_spec)["config"]["module_ids"]]

        default = modules("robot2")
        refused = call(max_params=10)
        assert not refused.accepted and "no sub-model fits" in refused.message
        answer = call(max_macs=whole)  # a bigger device: the whole cloud model fits
        assert answer.accepted, answer.message
        wait_for(lambda: latest("robot1").model_version >= answer.version, 30, "robot1 serving the new sub-model")
        assert modules("robot1") == [len(s.module_ids) for s in cloud.stages] != default
        assert modules("robot2") == default  # the other edge is untouched
    finally:
        listener.close()


def _values(listener, node: str) -> dict[str, str]:
    return diagnostic_values(listener.received["/diagnostics"], node)


def test_trainable_edge_adapts_itself_and_the_cloud_integrates_its_modules(system):
    system.params["edge_learner"].update(adapt_locally=True, local_batch=8, module_upload_frames=64)
    listener = _listener()
    try:
        system.start_loop()
        wait_for(lambda: int(_values(listener, "cloud_coordinator").get("modules_integrated", 0)) >= 2, 90,
                 "the cloud integrating the trainable edge's modules twice")
        wait_for(lambda: int(_values(listener, "edge_learner").get("local_steps", 0)) >= 16, 10,
                 "the edge's local adaptation steps on /diagnostics")
        assert int(_values(listener, "cloud_coordinator")["rejected_modules"]) == 0
        count = len(listener.received["/robot1/predictions"])
        wait_for(lambda: len(listener.received["/robot1/predictions"]) > count + 40, 10, "predictions going on")
    finally:
        listener.close()
    assert "error" not in system.procs[1].output().lower(), system.procs[1].output()[-3000:]


def test_the_cloud_learns_only_from_uploads_its_edges_signed(system):
    """A node that merely knows an edge's id must not teach (poison) the cloud model every edge is served from."""
    from eclm_ros.core.selection import encode_frames
    from eclm_ros.core.signing import SCHEME, generate_key, load_private_key, sign, upload_bytes
    from eclm_ros.core.tensor_codec import pack
    from eclm_ros.msg import EncodedFrame, LearnedModules, SampleBatch
    from eclm_ros.ros.ros_io import RELIABLE_QOS, bundle_to_msg

    system.params["edge_learner"].update(adapt_locally=True, local_batch=8, module_upload_frames=64)
    listener = _listener()
    real_uploads, real_modules = [], []
    listener.node.create_subscription(SampleBatch, "/eclm/samples", real_uploads.append, RELIABLE_QOS)
    listener.node.create_subscription(LearnedModules, "/eclm/learned_modules", real_modules.append, RELIABLE_QOS)
    try:
        system.start_loop()  # the key ring's keys, as shipped: the edge signs, the cloud checks
        samples = listener.publisher(SampleBatch, "/eclm/samples", RELIABLE_QOS)
        modules = listener.publisher(LearnedModules, "/eclm/learned_modules", RELIABLE_QOS)
        cloud = lambda: _values(listener, "cloud_coordinator")  # noqa: E731
        wait_for(lambda: int(cloud().get("modules_integrated", 0)) >= 1 and int(cloud().get("batches", 0)) >= 2,
                 90, "the cloud learning from the signed edge's uploads and modules")
        assert int(cloud()["rejected_batches"]) == 0 and int(cloud()["rejected_modules"]) == 0

        rng = np.random.default_rng(1)
        blobs = encode_frames(rng.integers(0, 255, (4, 28, 28), dtype=np.uint8))

        def batch(key=None, alter=False) -> SampleBatch:
            msg = SampleBatch(edge_id="robot1", batch_seq=10**6, model_version=1, encoding="png", num_classes=10)
            msg.frames = [EncodedFrame(width=28, height=28, channels=1, data=b) for b in blobs]
            msg.predicted_class, msg.entropy, msg.probabilities = [0] * 4, [0.5] * 4, [0.1] * 40
            if key is not None:
                msg.signature_scheme = SCHEME
                msg.signature = sign(key, upload_bytes("samples", "robot1", [10**6, 1, "png"], blobs))
            if alter:
                msg.frames[0].data = blobs[1]
            return msg

        own = load_private_key(system.ring.edge_private("robot1"))
        for msg in (batch(), batch(generate_key()), batch(own, alter=True), real_uploads[0]):
            samples.publish(msg)  # unsigned, signed by another key, altered after signing, replayed
        forged = LearnedModules(edge_id="robot1", base_version=1, submodel_spec="{}", frames=64)
        bundle_to_msg(pack({"stages.0.module0.body.0.weight": np.zeros(4, np.float32)}), forged.bundle)
        modules.publish(forged)
        modules.publish(real_modules[0])  # replayed
        wait_for(lambda: int(cloud().get("rejected_batches", 0)) >= 4 and int(cloud().get("rejected_modules", 0)) >= 2,
                 20, "the forged uploads refused on /diagnostics")
        learned = int(cloud()["batches"])
        wait_for(lambda: int(cloud()["batches"]) > learned, 20, "the cloud still learning from the real edge")
    finally:
        listener.close()
    out = system.procs[0].output()
    for reason in ("unsigned upload", "does not match", "replayed or out-of-order upload", "replayed modules"):
        assert reason in out, f"no cloud log line with {reason!r}:\n{out[-4000:]}"


def test_updates_shrink_to_int8_when_the_link_collapses_and_recover(system):
    """The cloud sizes each edge's updates to its measured downlink: int8 on a collapsing link (still applied by
    the edge), back to the configured fp16 when the link recovers."""
    from eclm_ros.msg import BandwidthEstimate
    from eclm_ros.ros.ros_io import RELIABLE_QOS

    listener = _listener()
    try:
        system.start_loop()
        links = listener.publisher(BandwidthEstimate, "/eclm/link_estimates", RELIABLE_QOS)
        cloud = lambda: _values(listener, "cloud_coordinator")  # noqa: E731

        def announce(downlink_bps: float) -> bool:  # what a bandwidth monitor would measure, again and again
            links.publish(BandwidthEstimate(edge_id="robot1", downlink_bps=downlink_bps, uplink_bps=1e6,
                                            link_up=True))
            return True

        wait_for(lambda: int(cloud().get("updates_fp16", 0)) >= 2, 60, "fp16 affine updates on a fast link")
        wait_for(lambda: announce(1e3) and int(cloud().get("updates_int8", 0)) >= 3, 60,
                 "int8 updates once the downlink collapses to 1 kbit/s")
        applied = int(_values(listener, "edge_learner")["applied"])
        wait_for(lambda: announce(1e3) and int(_values(listener, "edge_learner")["applied"]) > applied + 1,
                 30, "the edge applying the int8 updates")
        fp16 = int(cloud()["updates_fp16"])
        wait_for(lambda: announce(100e6) and int(cloud()["updates_fp16"]) > fp16, 60,
                 "fp16 updates again after the link recovers")
        assert int(_values(listener, "edge_learner")["rejected_updates"]) == 0
    finally:
        listener.close()


def test_updates_arriving_while_a_new_model_is_built_wait_for_it(system, quick_model):
    """A full update is built off the inference path; affine updates based on it that arrive meanwhile are
    parked and applied in order once it serves, not refused as based on a version the edge does not serve yet."""
    from eclm_ros.core.messages import KIND_FULL, KIND_NORM_AFFINE
    from eclm_ros.core.norm import affine_state
    from eclm_ros.core.signing import load_private_key
    from eclm_ros.core.strategies.distil import spec_json
    from eclm_ros.msg import ModelUpdate
    from eclm_ros.ros.ros_io import UPDATE_QOS

    edge = quick_model("edge").model
    spec = spec_json(quick_model("cloud").model, edge.spec)
    key = load_private_key(system.ring.cloud_private)
    shifted = {k: v + 0.01 for k, v in affine_state(edge).items()}
    listener = _listener()
    try:
        system.start("edge_learner", "/robot1")  # no cloud: these updates are the only ones
        _, feed = _camera(listener)
        updates = listener.publisher(ModelUpdate, "/eclm/updates/robot1", UPDATE_QOS)
        preds = listener.received["/robot1/predictions"]

        wait_for(lambda: feed() and preds and updates.get_subscription_count() >= 1, 60, "the edge serving")
        second = _signed_update(key, 2, 1, KIND_NORM_AFFINE, shifted, spec)
        updates.publish(_signed_update(key, 1, 0, KIND_FULL, edge.state_dict(), spec))
        updates.publish(second)
        updates.publish(_signed_update(key, 3, 2, KIND_NORM_AFFINE, shifted, spec))
        wait_for(lambda: feed() and preds[-1].model_version == 3, 30, "version 3 served")
        wait_for(lambda: feed() and int(_edge_values(listener).get("applied", 0)) == 3, 10, "3 updates applied")
        assert int(_edge_values(listener)["rejected_updates"]) == 0, system.logs()
        # secure by default (keys from the key ring, no key parameter set): an unsigned update and a replayed
        # signed one are refused, and the edge goes on serving version 3
        unsigned = _signed_update(key, 4, 3, KIND_NORM_AFFINE, shifted, spec)
        unsigned.signature_scheme, unsigned.signature = "", []
        updates.publish(unsigned)
        updates.publish(second)
        wait_for(lambda: feed() and int(_edge_values(listener).get("rejected_updates", 0)) == 2, 20,
                 "the unsigned and the replayed update refused")
        assert preds[-1].model_version == 3
    finally:
        listener.close()
    out = system.procs[0].output()
    assert "unsigned update" in out and "stale update: version 2" in out, out[-3000:]


@pytest.mark.parametrize("name", ["edge_learner", "cloud_coordinator"])
def test_the_shipped_configuration_does_not_start_without_keys(system, tmp_path, name):
    """Secure by default: an empty key ring stops the edge and the cloud at start-up with the command that
    fills it; the lab opt-out starts them, saying what it gives up."""
    system.params[name]["keys_dir"] = str(tmp_path / "no_keys")
    proc = system.start(name, "/robot3")
    code = proc.proc.wait(timeout=30)
    assert code == 2 and "eclm-ros keys init" in proc.output() and "insecure: true" in proc.output(), proc.output()
    system.params[name]["insecure"] = True
    lab = system.start(name, "/robot3")
    wait_for(lambda: "insecure (lab mode)" in lab.output() or not lab.alive(), 60, "the lab-mode warning")
    assert lab.alive(), lab.output()


@pytest.mark.parametrize("name", ["edge_learner", "cloud_coordinator"])
def test_a_node_without_its_model_exits_at_once_naming_the_fix(system, tmp_path, name):
    system.params[name]["model_path"] = str(tmp_path / "empty-cache" / "edge.pt")
    proc = system.start(name, "/robot1")
    code = proc.proc.wait(timeout=10)  # never trains: it says what is missing and goes
    assert code == 2 and "eclm-ros train" in proc.output() and "model_path" in proc.output(), proc.output()


def test_every_node_stops_on_sigint_or_sigterm_within_2_s_while_the_loop_runs(system):
    """The loop at work (uploads, distillation, swaps, probes): SIGINT or SIGTERM to each node in turn, a clean
    exit (measured here: 0.03-0.3 s; the interpreter's own teardown, skipped, took 1-3 s)."""
    listener = _listener()
    try:
        system.start_loop()
        system.start("bandwidth_monitor", "/robot1")
        wait_for(lambda: int(_values(listener, "edge_learner").get("applied", 0)) >= 2
                 and _values(listener, "bandwidth_monitor"), 90, "the loop running (two updates applied)")
    finally:
        listener.close()
    stops = {}
    for i, proc in enumerate(system.procs):
        sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
        os.killpg(proc.proc.pid, sig)
        start = time.monotonic()
        code = proc.proc.wait(timeout=10)
        stops[f"{Path(proc.command[1]).name} ({sig.name})"] = (code, round(time.monotonic() - start, 2))
    print("exit code, seconds after the signal:", stops)
    assert all(code == 0 and took < 2.0 for code, took in stops.values()), f"{stops}\n{system.logs()}"


# a new value for every writable parameter: a parameter added without one here fails the test below
RUN_TIME_VALUES = {
    "edge_learner": {"upload_ratio": 0.35, "upload_batch": 12, "max_queued_batches": 20, "max_update_bytes": 2 ** 25,
                     "register_period_s": 3.0, "module_upload_frames": 256, "chunk_timeout_s": 20.0,
                     "max_params": 500_000, "max_macs": 100_000_000, "max_latency_ms": 50.0,
                     "device": "jetson-orin-nano"},
    "cloud_coordinator": {"update_encoding": "int8", "update_deadline_s": 2.0, "max_pending_batches": 32,
                          "save_period_s": 5.0, "max_chunk_bytes": 2 ** 23, "merge_period_s": 20.0},
    "bandwidth_monitor": {"probe_period_s": 0.7, "probe_bytes": 16384, "reply_bytes": 8192, "probe_time_s": 0.2,
                          "probe_timeout_s": 1.5, "upload_share": 0.4},
    "camera_stream": {"rate_hz": 25.0, "encoding": "rgb8", "frame_id": "cam_front", "max_frames": 100_000},
}


def _set_parameter(listener, node: str, name: str, value):
    """``ros2 param set``: the SetParameters service of a running node; the SetParametersResult."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = listener.node.create_client(SetParameters, f"{node}/set_parameters")
    wait_for(client.service_is_ready, 30, f"{node}/set_parameters")
    future = client.call_async(SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()]))
    wait_for(future.done, 10, f"the answer to setting {name}")
    listener.node.destroy_client(client)
    return future.result().results[0]


def _settings(listener, node: str) -> dict[str, str]:
    return diagnostic_values(listener.received["/diagnostics"], node, "settings")


def _same(reported: str, value) -> bool:
    return reported == str(value) if isinstance(value, str) else abs(float(reported) - value) < 1e-6 * max(1, value)


def test_every_writable_parameter_takes_effect_at_run_time_and_bad_values_are_refused(system):
    """Each writable parameter set on a running node reaches the node's core object (read back from it on
    /diagnostics); an out-of-range value is refused with the reason; a read-only one cannot be set."""
    from eclm_ros.ros.params import NODES
    from sensor_msgs.msg import Image

    from eclm_ros.ros.ros_io import SENSOR_QOS

    for node, values in RUN_TIME_VALUES.items():
        assert set(values) == {p.name for p in NODES[node] if not p.read_only}, f"{node}: update RUN_TIME_VALUES"
    listener = _listener()
    images = []
    listener.node.create_subscription(Image, "/robot1/image", images.append, SENSOR_QOS)
    try:
        system.start_loop()
        system.start("bandwidth_monitor", "/robot1")
        for node, values in RUN_TIME_VALUES.items():
            wait_for(lambda: _settings(listener, node), 60, f"{node} reporting its settings")
            for name, value in values.items():
                result = _set_parameter(listener, f"/{'eclm' if node == 'cloud_coordinator' else 'robot1'}/{node}",
                                        name, value)
                assert result.successful, f"{node}.{name}: {result.reason}"
                wait_for(lambda: _same(_settings(listener, node)[name], value), 10, f"{node}.{name} in effect")
        edge = "/robot1/edge_learner"
        refused = _set_parameter(listener, edge, "upload_ratio", 1.5)
        assert not refused.successful and "upload_ratio" in refused.reason and "range" in refused.reason
        assert not _set_parameter(listener, edge, "runtime", "torch").successful  # read-only
        assert not _set_parameter(listener, edge, "upload_batch", 0).successful
        count, reports = len(images), len(listener.received["/diagnostics"])
        wait_for(lambda: len(images) > count + 5, 10, "frames after the changes")
        assert images[-1].encoding == "rgb8" and images[-1].header.frame_id == "cam_front"
        wait_for(lambda: len(listener.received["/diagnostics"]) > reports + 8, 10, "fresh diagnostics")
        assert _same(_settings(listener, "edge_learner")["upload_ratio"], 0.35)  # the refused 1.5 changed nothing
        assert _same(_settings(listener, "edge_learner")["upload_batch"], 12)
    finally:
        listener.close()
    assert all(p.alive() for p in system.procs), system.logs()


def _lifecycle(listener, node: str, transition: str = "") -> tuple[bool, str]:
    """``ros2 lifecycle set NODE <transition>`` when one is given, then ``ros2 lifecycle get NODE``: whether the
    transition succeeded and the state's label."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    def call(srv_type, service: str, request):
        client = listener.node.create_client(srv_type, f"{node}/{service}")
        wait_for(client.service_is_ready, 30, f"{node}/{service}")
        future = client.call_async(request)
        wait_for(future.done, 60, f"{node}/{service} answering")
        listener.node.destroy_client(client)
        return future.result()

    ok = True
    if transition:
        ids = {"configure": Transition.TRANSITION_CONFIGURE, "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE, "cleanup": Transition.TRANSITION_CLEANUP}
        ok = call(ChangeState, "change_state", ChangeState.Request(transition=Transition(id=ids[transition]))).success
    return ok, call(GetState, "get_state", GetState.Request()).current_state.label


def _quiet(listener, topic: str, images: list, seconds: float = 2.0) -> bool:
    """Nothing new on ``topic`` for ``seconds`` (after a 1 s grace) while camera frames kept coming."""
    time.sleep(1.0)
    count, frames = len(listener.received[topic]), len(images)
    time.sleep(seconds)
    assert len(images) > frames + 10, "the camera stopped publishing"
    return len(listener.received[topic]) == count


def test_managed_nodes_serve_only_when_active_keep_their_state_and_refuse_a_bad_model(system, tmp_path):
    """autostart:=false: the edge learner and cloud coordinator wait unconfigured; configure loads the model but
    serves nothing; activate serves, registers and learns; deactivate stops predictions and uploads and keeps
    the model version; cleanup and configure again work; a configuration with a missing model is refused with
    the reason while the node stays up."""
    from sensor_msgs.msg import Image

    from eclm_ros.ros.ros_io import SENSOR_QOS

    for name in ("edge_learner", "cloud_coordinator"):
        system.params[name]["autostart"] = False
    listener = _listener()
    images = []
    listener.node.create_subscription(Image, "/robot1/image", images.append, SENSOR_QOS)
    edge, cloud, preds = "/robot1/edge_learner", "/eclm/cloud_coordinator", "/robot1/predictions"
    try:
        system.start_loop()
        assert _lifecycle(listener, edge) == (True, "unconfigured")
        assert _lifecycle(listener, cloud) == (True, "unconfigured")
        assert _quiet(listener, preds, images), "an unconfigured edge predicted"
        assert _lifecycle(listener, cloud, "configure") == (True, "inactive")
        assert _lifecycle(listener, edge, "configure") == (True, "inactive")
        assert _quiet(listener, preds, images), "an inactive edge predicted"
        assert not _values(listener, "edge_learner"), "an inactive edge reported on /diagnostics"

        assert _lifecycle(listener, cloud, "activate") == (True, "active")
        assert _lifecycle(listener, edge, "activate") == (True, "active")
        wait_for(lambda: int(_values(listener, "edge_learner").get("applied", 0)) >= 2, 90,
                 "the active edge applying two cloud updates")
        version = listener.received[preds][-1].model_version
        assert version >= 1

        assert _lifecycle(listener, edge, "deactivate") == (True, "inactive")
        time.sleep(1.5)  # uploads in flight land
        batches = int(_values(listener, "cloud_coordinator")["batches"])
        assert _quiet(listener, preds, images), "a deactivated edge predicted"
        assert int(_values(listener, "cloud_coordinator")["batches"]) == batches, "a deactivated edge uploaded"

        count = len(listener.received[preds])
        assert _lifecycle(listener, edge, "activate") == (True, "active")
        wait_for(lambda: len(listener.received[preds]) > count + 10, 30, "predictions after re-activation")
        assert listener.received[preds][count].model_version >= version, "re-activation lost the model"

        assert _lifecycle(listener, cloud, "deactivate") == (True, "inactive")
        assert list((tmp_path / "state").glob("*")), "the deactivated cloud did not save its state"
        assert _lifecycle(listener, edge, "deactivate") == (True, "inactive")
        assert _lifecycle(listener, edge, "cleanup") == (True, "unconfigured")
        assert _lifecycle(listener, edge, "configure") == (True, "inactive")

        system.params["edge_learner"]["model_path"] = str(tmp_path / "nowhere" / "edge.pt")
        bad = system.start("edge_learner", "/robot2")
        assert _lifecycle(listener, "/robot2/edge_learner", "configure") == (False, "unconfigured")
        assert bad.alive() and "eclm-ros train" in bad.output(), bad.output()
        assert _lifecycle(listener, "/robot2/edge_learner", "activate")[0] is False  # not from unconfigured
    finally:
        listener.close()
    assert all(p.alive() for p in system.procs), system.logs()


def test_the_edge_speaks_vision_msgs_every_score_and_a_latched_label_list(system):
    """A consumer needs no eclm_ros types: per frame a vision_msgs/Classification with every class score under
    the frame's header, agreeing with the Prediction; the labels as a LabelInfo a late subscriber still gets."""
    from vision_msgs.msg import Classification, LabelInfo

    from eclm_ros.msg import Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS, SENSOR_QOS
    from eclm_ros.ros.vision import LABEL_QOS
    from eclm_ros.sim.data import fashion_mnist_description

    listener = Recorder({"/robot1/predictions": (Prediction, RELIABLE_QOS),
                         "/robot1/classification": (Classification, RELIABLE_QOS)})
    images = listener.publisher(type(_image(b"")), "/robot1/image", SENSOR_QOS)
    rng, sent = np.random.default_rng(5), [0]

    def feed() -> bool:
        for _ in range(5):
            sent[0] += 1
            msg = _image(rng.integers(0, 255, 784, dtype=np.uint8).tobytes())
            msg.header.stamp.sec, msg.header.frame_id = sent[0], "camera"
            images.publish(msg)
            time.sleep(0.02)
        return True

    late: list = []
    try:
        system.start("edge_learner", "/robot1")
        wait_for(lambda: feed() and len(listener.received["/robot1/classification"]) >= 30, 90,
                 "30 vision_msgs/Classification messages")
        listener.node.create_subscription(LabelInfo, "/robot1/label_info", late.append, LABEL_QOS)
        wait_for(lambda: late, 20, "the latched label list on label_info (subscribed after it was published)")
    finally:
        listener.close()
    labels = fashion_mnist_description().labels
    assert [(c.class_id, c.class_name) for c in late[0].class_map] == list(enumerate(labels))
    preds = {_stamp(p.header): p for p in listener.received["/robot1/predictions"]}
    joined = [(c, preds[_stamp(c.header)]) for c in listener.received["/robot1/classification"]
              if _stamp(c.header) in preds]
    assert len(joined) >= 20
    for c, p in joined:
        scores = np.array([h.score for h in c.results])
        assert [h.class_id for h in c.results] == [str(i) for i in range(len(labels))]
        assert c.header.frame_id == "camera" and abs(scores.sum() - 1) < 1e-3
        assert int(np.argmax(scores)) == p.class_id and scores[p.class_id] == pytest.approx(p.score, abs=1e-4)


def test_a_users_onnx_model_serves_over_dds_with_its_labels_and_takes_the_clouds_distilled_updates(system,
                                                                                                 user_models):
    """A robot integrator's own 32x32 colour classifier of 4 shapes on the edge, a wider model of theirs as the
    cloud's teacher: the edge publishes vision_msgs with the user's labels, the cloud says it distils only, and
    its signed affine updates reach the edge (model versions rise, none refused)."""
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from user_models import LABELS, MEAN, STD, shapes
    from vision_msgs.msg import Classification, LabelInfo

    from eclm_ros.msg import Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS, SENSOR_QOS
    from eclm_ros.ros.vision import LABEL_QOS

    labels = str(user_models["labels"])
    system.params["edge_learner"].update(model_path=str(user_models["edge_onnx"]), labels_path=labels,
                                         input_mean=list(MEAN), input_std=list(STD))
    system.params["cloud_coordinator"].update(model_path=str(user_models["teacher_onnx"]),
                                              edge_model_path=str(user_models["edge_onnx"]), labels_path=labels)
    listener = Recorder({"/robot1/predictions": (Prediction, RELIABLE_QOS),
                         "/robot1/classification": (Classification, RELIABLE_QOS),
                         "/diagnostics": (DiagnosticArray, 50)})
    images = listener.publisher(Image, "/robot1/image", SENSOR_QOS)
    frames = (shapes(400, 9)[0].astype(np.float32) * 0.35 + 20).astype(np.uint8)  # night
    sent = [0]

    def feed() -> bool:
        for _ in range(5):
            img = frames[sent[0] % len(frames)]
            sent[0] += 1
            images.publish(Image(height=32, width=32, encoding="rgb8", step=96, data=img.tobytes()))
            time.sleep(0.02)
        return True

    late: list = []
    try:
        system.start("cloud_coordinator", "/eclm")
        system.start("edge_learner", "/robot1")
        preds = listener.received["/robot1/predictions"]
        wait_for(lambda: feed() and preds and preds[-1].model_version >= 3, 120,
                 "model version >= 3 (registered with the file's weights, then distilled updates)")
        listener.node.create_subscription(LabelInfo, "/robot1/label_info", late.append, LABEL_QOS)
        wait_for(lambda: feed() and late, 20, "the user's labels on label_info")
        cloud = diagnostic_values(listener.received["/diagnostics"], "cloud_coordinator", "edges")
        edge = _edge_values(listener)
    finally:
        listener.close()
    assert [c.class_name for c in late[0].class_map] == list(LABELS)
    assert {p.label for p in preds} <= set(LABELS) and len({p.label for p in preds}) >= 2
    assert all(len(c.results) == 4 for c in listener.received["/robot1/classification"])
    assert cloud.get("strategy", "").startswith("distillation only"), cloud
    assert int(edge.get("rejected_updates", 1)) == 0, system.logs()


def test_an_edge_given_a_model_with_folded_normalisation_exits_saying_how_to_export_it(system, user_models):
    system.params["edge_learner"]["model_path"] = str(user_models["folded_onnx"])
    proc = system.start("edge_learner", "/robot1")
    code = proc.proc.wait(timeout=30)
    assert code == 2 and "do_constant_folding=False" in proc.output() and "allow_unadaptable" in proc.output(), \
        proc.output()


def _write_bag(path: Path, frames: np.ndarray, image_topic: bool = True) -> Path:
    """A rosbag2 (mcap) as `ros2 bag record` would leave it: rgb8 frames at 30 Hz on /camera/image_raw, their
    PNG CompressedImage on /camera/image_raw/compressed, and a string topic."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    with Writer(path, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        chatter = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=store)
        if image_topic:
            raw = writer.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=store)
            packed = writer.add_connection("/camera/image_raw/compressed", "sensor_msgs/msg/CompressedImage",
                                           typestore=store)
        for i, img in enumerate(frames):
            t = 1_700_000_000 * 10 ** 9 + i * 33_333_333
            header = T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=t // 10 ** 9,
                                                                                   nanosec=t % 10 ** 9),
                                              frame_id="camera")
            writer.write(chatter, t, store.serialize_cdr(T["std_msgs/msg/String"](data=f"frame {i}"),
                                                         "std_msgs/msg/String"))
            if not image_topic:
                continue
            msg = T["sensor_msgs/msg/Image"](header=header, height=img.shape[0], width=img.shape[1], encoding="rgb8",
                                             is_bigendian=0, step=img.shape[1] * 3, data=img.reshape(-1).copy())
            writer.write(raw, t, store.serialize_cdr(msg, "sensor_msgs/msg/Image"))
            png = np.frombuffer(__import__("cv2").imencode(".png", img[:, :, ::-1])[1].tobytes(), np.uint8)
            comp = T["sensor_msgs/msg/CompressedImage"](header=header, format="png", data=png.copy())
            writer.write(packed, t, store.serialize_cdr(comp, "sensor_msgs/msg/CompressedImage"))
    return path


@pytest.mark.parametrize("topic", ["/camera/image_raw", "/camera/image_raw/compressed"])
def test_a_recorded_bag_replays_as_the_camera_of_an_edge_serving_a_users_model(system, user_models, tmp_path, topic):
    """A bag written with rosbags (mcap; raw and compressed image topics) is the camera: every frame reaches the
    edge as recorded (pixels and recorded stamps, with /clock), and the user's model labels it."""
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image
    from user_models import LABELS, MEAN, STD, shapes

    from eclm_ros.msg import Prediction
    from eclm_ros.ros.ros_io import RELIABLE_QOS, SENSOR_QOS

    frames = shapes(60, 4)[0]
    bag = _write_bag(tmp_path / "drive", frames)
    system.params["camera_stream"] = {"source": "bag", "path": str(bag), "bag_topic": topic, "bag_timing": True,
                                      "wait_for_subscribers": 2,  # the edge and this test's listener
                                      "publish_clock": True, "size": [32, 32], "encoding": "rgb8"}
    system.params["edge_learner"].update(model_path=str(user_models["edge_onnx"]),
                                         labels_path=str(user_models["labels"]), input_mean=list(MEAN),
                                         input_std=list(STD))
    listener = Recorder({"/robot1/image": (Image, SENSOR_QOS), "/robot1/predictions": (Prediction, RELIABLE_QOS),
                         "/clock": (Clock, 10)})
    try:
        system.start("edge_learner", "/robot1")
        wait_for(lambda: len(listener.node.get_publishers_info_by_topic("/robot1/predictions")) > 0, 60,
                 "the edge learner up")
        time.sleep(3.0)  # discovery between the listener and the edge settles before the camera starts
        system.start("camera_stream", "/robot1")
        # the first frames may leave before the camera's publisher is matched (best effort, as `ros2 bag play`)
        wait_for(lambda: len(listener.received["/robot1/image"]) >= 40, 60, "the bag's frames on /robot1/image")
        wait_for(lambda: len(listener.received["/robot1/predictions"]) >= 30, 20, "predictions of the bag's frames")
    finally:
        listener.close()
    images = listener.received["/robot1/image"]
    t0 = 1_700_000_000
    index = {(m.header.stamp.sec - t0) * 10 ** 9 + m.header.stamp.nanosec: m for m in images}
    for k, msg in index.items():
        i = round(k / 33_333_333)
        got = np.frombuffer(bytes(msg.data), np.uint8).reshape(32, 32, 3)
        assert np.array_equal(got, frames[i]), f"frame {i} changed on the way"
    assert len(listener.received["/clock"]) >= 40
    assert {p.label for p in listener.received["/robot1/predictions"]} <= set(LABELS)


def test_a_bag_without_an_image_topic_is_refused_naming_its_topics(system, tmp_path):
    bag = _write_bag(tmp_path / "talk", np.zeros((3, 8, 8, 3), np.uint8), image_topic=False)
    system.params["camera_stream"] = {"source": "bag", "path": str(bag)}
    proc = system.start("camera_stream", "/robot1")
    code = proc.proc.wait(timeout=30)
    assert code == 2 and "no sensor_msgs/Image or CompressedImage topic" in proc.output() and "/chatter" in \
        proc.output(), proc.output()
