"""A fleet over DDS: one cloud and four robots as separate processes (each a camera, an edge learner and a
bandwidth monitor in its own namespace): two forward-only robots of the small budget, one of the tiny budget and
a trainable one. Each robot gets only its own updates and the sub-model its budget affords, and each monitor
sees and reports only its own robot's link. Quick models; every wait has a wide margin (13 processes on a
shared 2-core machine), nothing is timed."""
import json

import pytest

from node_processes import Recorder, ros_available, wait_for
from test_nodes import System

pytestmark = pytest.mark.skipif(ros_available() is not None, reason=str(ros_available()))


@pytest.fixture
def system(tmp_path, quick_cache):
    s = System(tmp_path, quick_cache)
    yield s
    s.stop()


def _newest(arrays: list, hardware_id: str, concern: str) -> dict[str, str]:
    """The newest values a node (its full name) reported for one concern on /diagnostics."""
    for arr in reversed(arrays):
        for status in arr.status:
            if status.hardware_id == hardware_id and status.name.endswith(f": {concern}"):
                return {kv.key: kv.value for kv in status.values}
    return {}


def test_one_cloud_serves_a_mixed_fleet_and_each_robot_gets_and_measures_only_its_own(system, quick_model):
    from diagnostic_msgs.msg import DiagnosticArray

    from eclm_ros.bench.fleet import fleet
    from eclm_ros.core.models import SubModelSpec, spec_cost
    from eclm_ros.msg import BandwidthEstimate, EdgeStatus, ModelUpdate
    from eclm_ros.ros.ros_io import RELIABLE_QOS, UPDATE_QOS

    cloud = quick_model("cloud").model
    robots = fleet(4)
    assert [r.kind for r in robots] == ["small", "small", "tiny", "trainable"]
    names = [r.name for r in robots]
    listener = Recorder({"/eclm/edge_status": (EdgeStatus, RELIABLE_QOS),
                         "/eclm/link_estimates": (BandwidthEstimate, RELIABLE_QOS),
                         "/diagnostics": (DiagnosticArray, 200),
                         **{f"/eclm/updates/{n}": (ModelUpdate, UPDATE_QOS) for n in names},
                         **{f"/{n}/bandwidth": (BandwidthEstimate, RELIABLE_QOS) for n in names}})
    statuses, diagnostics = listener.received["/eclm/edge_status"], listener.received["/diagnostics"]

    def status(name: str):
        return next((s for s in reversed(statuses) if s.edge_id == name), None)

    def edge(name: str, concern: str) -> dict[str, str]:
        return _newest(diagnostics, f"/{name}/edge_learner", concern)

    try:
        system.params["camera_stream"]["rate_hz"] = 10.0
        system.params["bandwidth_monitor"]["probe_period_s"] = 1.0
        # 13 processes on two cores: the cloud learns with CEMA's losses alone, as the README advises for a fleet
        # (restyled views cost CPU per robot; with them, probe answers came late enough here that one monitor
        # never measured its downlink)
        system.params["cloud_coordinator"]["source_views"] = 0
        system.start("cloud_coordinator", "/eclm")
        for r in robots:
            profile = r.profile(cloud)
            system.params["edge_learner"].update(max_macs=profile.max_macs, device=profile.device,
                                                 adapt_locally=profile.trainable, local_batch=8,
                                                 module_upload_frames=64)
            system.params["camera_stream"].update(seed=r.index, schedule=r.schedule(600, 5))
            for node in ("edge_learner", "camera_stream", "bandwidth_monitor"):
                system.start(node, f"/{r.name}")
        forward_only = [r.name for r in robots if r.kind != "trainable"]
        wait_for(lambda: all(int(edge(n, "updates").get("applied", 0)) >= 3 for n in forward_only), 300,
                 f"{forward_only} each applying its registration and two learned updates")
        wait_for(lambda: int(_newest(diagnostics, "/eclm/cloud_coordinator", "uploads")
                             .get("modules_integrated", 0)) >= 1, 180, "the trainable robot's modules integrated")
        wait_for(lambda: all(status(n) for n in names), 30, "a status from every robot")
        wait_for(lambda: all(_newest(diagnostics, f"/{n}/bandwidth_monitor", "link") for n in names), 30,
                 "every monitor reporting")

        def readers(topic: str) -> set[tuple[str, str]]:
            return {(i.node_namespace, i.node_name) for i in listener.node.get_subscriptions_info_by_topic(topic)
                    if i.node_name != listener.node.get_name()}

        for r in robots:  # on the DDS graph, an edge's update and probe-answer topics reach only its own robot
            assert readers(f"/eclm/updates/{r.name}") == {(f"/{r.name}", "edge_learner")}
            assert readers(f"/eclm/link_probes/{r.name}") == {(f"/{r.name}", "bandwidth_monitor")}
        assert readers("/eclm/samples") == {("/eclm", "cloud_coordinator")}  # no robot reads another's uploads
        for n in names:  # ... and carried only updates for it, none of which any robot refused or ignored
            assert listener.received[f"/eclm/updates/{n}"]
            assert {u.target_edge for u in listener.received[f"/eclm/updates/{n}"]} == {n}
            values = edge(n, "updates")
            assert values["rejected_updates"] == "0" and values["ignored_updates"] == "0", (n, values)

        macs = {}
        for r in robots:  # each serves the sub-model its own budget affords, and says what it is
            s = status(r.name)
            trainable = s.profile.runtime == s.profile.RUNTIME_TRAINABLE
            assert s.profile.max_macs == r.profile(cloud).max_macs and trainable == (r.kind == "trainable")
            spec = SubModelSpec(tuple(tuple(m) for m in json.loads(s.submodel_spec)["config"]["module_ids"]))
            macs[r.name] = spec_cost(cloud, spec)[1]
            assert macs[r.name] <= s.profile.max_macs, (r.name, macs[r.name], s.profile.max_macs)
        tiny = robots[2].profile(cloud).max_macs
        assert macs["robot3"] <= tiny < min(macs["robot1"], macs["robot2"], macs["robot4"]), macs
        cloud_edges = _newest(diagnostics, "/eclm/cloud_coordinator", "edges")
        assert all(f"version/{n}" in cloud_edges for n in names)  # one cloud serves them all

        # a downlink estimate needs a probe answered in time, which a cloud busy learning for four robots on two
        # shared cores sometimes misses for a while: waited for, not assumed by this point
        wait_for(lambda: all(any(m.link_up and m.downlink_bps > 0 for m in listener.received[f"/{n}/bandwidth"])
                             for n in names), 120, "every monitor measuring its robot's downlink")
        assert {m.edge_id for m in listener.received["/eclm/link_estimates"]} == set(names)
        for n in names:  # every monitor reports its own robot's link, measured by its own probes
            assert listener.received[f"/{n}/bandwidth"]
            assert {m.edge_id for m in listener.received[f"/{n}/bandwidth"]} == {n}
            assert any(m.link_up and m.downlink_bps > 0 for m in listener.received[f"/{n}/bandwidth"]), n
    finally:
        listener.close()
    for proc in system.procs:
        assert proc.alive(), proc.output()[-3000:]
