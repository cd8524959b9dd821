"""The system without DDS: the edge agent and the cloud coordinator (the very objects the nodes run) over the
in-memory network, on a simulated clock. Link budget and queue bound, parking during a slow swap, version
order and resync after a cloud restart, refusal of forged / stale / oversized updates, signing both ways."""
from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np
import pytest

from eclm_ros.core.coordinator import Coordinator, CoordinatorConfig
from eclm_ros.core.edge_agent import EdgeAgent, EdgeConfig
from eclm_ros.core.edge_runtime import TorchEdgeRuntime, make_runtime
from eclm_ros.core.health import ERROR, OK, WARN
from eclm_ros.core.messages import KIND_NORM_AFFINE, ModelUpdate, UpdateHeader
from eclm_ros.core.norm import affine_state
from eclm_ros.core.signing import EdgeKeys, generate_key, save_key_pair
from eclm_ros.core.strategies import make_strategy
from eclm_ros.core.tensor_codec import pack
from eclm_ros.core.transport import InMemoryNetwork, LinkModel, SimClock
from eclm_ros.core.updates import UpdateRejected, check_update, signature_for
from eclm_ros.sim.corruptions import corrupt
from eclm_ros.sim.data import load_fashion_mnist

X, _ = load_fashion_mnist("test")
FPS = 30.0


def _frames(n: int, name: str = "contrast", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([corrupt(img, name, 5, rng) for img in X[seed:seed + n]])


class World:
    """One coordinator and its edges on a simulated clock; ``run(n)`` serves n camera frames on every edge."""

    def __init__(self, quick_model, tmp_path, *, cloud_key=None, edge_keys=None, state_dir=None, **edge_config):
        self.quick_model, self.tmp = quick_model, tmp_path
        self.clock = SimClock()
        self.net = InMemoryNetwork(self.clock)
        self.cloud_key, self.edge_keys, self.state_dir = cloud_key, edge_keys, state_dir
        self.cloud = self.start_cloud()
        self.edges: dict[str, EdgeAgent] = {}
        self.edge_config = edge_config
        self.frames = _frames(256)

    def start_cloud(self) -> Coordinator:
        cloud = Coordinator(make_strategy("eclm_ros", self.quick_model("cloud")), self.net.cloud_link(),
                            CoordinatorConfig(), private_key=self.cloud_key, edge_keys=self.edge_keys,
                            state_dir=self.state_dir, clock=self.clock)
        self.net.serve(cloud)
        return cloud

    def add_edge(self, edge_id: str = "robot1", runtime=None, private_key=None, uplink=LinkModel(),
                 **config) -> EdgeAgent:
        ckpt = self.quick_model("edge")
        agent = EdgeAgent(runtime or make_runtime("onnx", ckpt.model), ckpt.description,
                          self.net.connect(edge_id, uplink=uplink),
                          EdgeConfig(edge_id=edge_id, **{**self.edge_config, **config}),
                          cloud_key=self.cloud_key.public_key() if self.cloud_key else None,
                          private_key=private_key, clock=self.clock, threaded=False)
        self.net.attach(edge_id, agent)
        self.edges[edge_id] = agent
        return agent

    def step(self) -> None:
        self.clock.advance(1 / FPS)
        self.net.deliver()
        self.cloud.process()
        self.net.deliver()
        for agent in self.edges.values():
            agent.tick()

    def run(self, n: int, start: int = 0) -> list[int]:
        """Serve n frames on every edge; the versions robot1 served them with."""
        versions = []
        for i in range(start, start + n):
            for agent in self.edges.values():
                pred = agent.on_frame(self.frames[i % len(self.frames)])
                if agent is next(iter(self.edges.values())):
                    versions.append(pred.model_version)
            self.step()
        return versions


def test_the_loop_closes_and_versions_only_move_forward(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=8, upload_ratio=0.3)
    agent = world.add_edge()
    versions = world.run(400)
    assert agent.registered and agent.counters["applied"] >= 3 and agent.counters["rejected_updates"] == 0
    assert versions[0] == 0 and versions[-1] == agent.version == world.cloud.versions["robot1"]
    assert all(b >= a for a, b in zip(versions, versions[1:]))  # served versions never go back
    assert world.cloud.counters["frames"] == agent.counters["uploaded"] > 0


def test_uploads_keep_to_the_link_budget_and_the_queue_is_bounded(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=4, upload_ratio=1.0, max_queued_batches=5)
    agent = world.add_edge()
    world.run(30)  # registered, unlimited link
    sent = agent.counters["uploaded_bytes"]
    budget = 4_000.0  # bit/s: a few PNG frames per second
    agent.on_link(budget)
    world.run(300, start=30)  # 10 s
    assert 8 * (agent.counters["uploaded_bytes"] - sent) <= budget * (10 + 2)  # 10 s of budget + the 2 s bucket
    assert agent.counters["uploaded_bytes"] > sent  # the budget is used, not just refused
    assert len(agent.queue) == 5 and agent.counters["dropped_batches"] > 0  # the rest queued, bounded
    agent.on_link(1e9)  # the link recovers
    world.run(30, start=330)
    assert len(agent.queue) == 0  # a recovered link drains the queue
    agent.on_link(float("nan"))  # refused, the budget stays
    assert agent.budget_bps == 1e9
    agent.on_link(float("inf"))  # a link up whose rate is not measured yet does not limit uploads
    assert math.isinf(agent.budget_bps)


def test_a_link_reported_down_takes_no_upload_and_its_return_is_a_check_in_at_once(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=4, upload_ratio=1.0, register_period_s=30.0)
    agent = world.add_edge()
    agent.on_link(1e6, link_up=True)
    world.run(30)
    sent = agent.counters["batches_sent"]
    agent.on_link(5e5, link_up=False)  # the monitor's last budget, but the link is down
    world.run(60, start=30)
    assert agent.counters["batches_sent"] == sent and len(agent.queue) > 0  # not one batch into a dead link
    heartbeats = []
    register = agent.link.register
    agent.link.register = lambda request, done: (heartbeats.append(request.current_version), register(request, done))
    agent.on_link(1e6, link_up=True)
    world.run(3, start=90)
    assert len(heartbeats) == 1  # at once, not a 30 s heartbeat period later
    world.run(30, start=93)
    assert len(agent.queue) == 0


def test_a_slow_downlink_is_not_mistaken_for_an_edge_out_of_sync(quick_model, tmp_path):
    """A new model takes many heartbeat periods on a slow downlink: the cloud, told the downlink by the edge's
    monitor, waits for it (its bits over the measured rate) instead of resending it behind itself again and again
    (the edge would refuse the updates already travelling as older than each new registration)."""
    world = World(quick_model, tmp_path, upload_batch=8, upload_ratio=0.3, register_period_s=1.0)
    agent = world.add_edge()
    world.run(60)
    registrations = world.cloud.counters["registrations"]
    world.net.set_link("robot1", downlink=LinkModel(rate_bps=20_000))
    world.cloud.on_link("robot1", 20_000)
    reply = world.cloud.reassemble("robot1", agent.config.profile, "operator")  # the whole model travels
    transfer = world.net.down["robot1"].free_at - world.clock()
    assert transfer > 5.0, transfer  # five heartbeats or more while it travels
    versions = world.run(int((transfer + 10.0) * FPS), start=60)  # until 10 s after it arrived
    assert agent.version > reply.version and agent.counters["rejected_updates"] == 0, agent.reasons
    assert world.cloud.counters["registrations"] == registrations  # no resync
    assert all(b >= a for a, b in zip(versions, versions[1:]))


def test_an_outage_queues_uploads_and_the_edge_resyncs_after_it(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=4, upload_ratio=0.5, max_queued_batches=8,
                  register_period_s=1.0)
    agent = world.add_edge(uplink=LinkModel(outages=((5.0, 15.0),)))
    world.run(120)  # 4 s
    assert agent.registered
    versions = world.run(300, start=120)  # 10 s of outage
    assert not agent.registered and len(agent.queue) == 8 and agent.counters["dropped_batches"] > 0
    assert len(versions) == 300  # served every frame
    world.run(150, start=420)
    assert agent.registered and len(agent.queue) == 0


class SlowSwapRuntime(TorchEdgeRuntime):
    """A runtime whose new models take until ``gate`` opens to build (a slow session build on a small CPU)."""

    gate = threading.Event()

    def _swap_now(self, model) -> None:
        assert self.gate.wait(10)
        super()._swap_now(model)


def test_updates_arriving_during_a_slow_swap_are_parked_and_applied_in_order(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=4, upload_ratio=0.5)
    ckpt = quick_model("edge")
    agent = world.add_edge(runtime=SlowSwapRuntime(ckpt.model))
    agent.threaded = True  # swaps on their own thread, as in the node
    SlowSwapRuntime.gate.clear()
    world.run(60)  # registration's full update is being built: affine updates based on it must wait
    assert agent.swapping is not None and agent.version == 0
    spec = world.cloud.strategy.served_spec("robot1")
    parked = len(agent.parked)  # the cloud may already have distilled from the first uploads
    for _ in range(3):
        world.cloud.publish("robot1", _affine_update(ckpt.model, spec), "fp16")
    world.net.deliver()
    assert len(agent.parked) == parked + 3 and agent.counters["rejected_updates"] == 0
    SlowSwapRuntime.gate.set()
    agent.swapping[0].result(timeout=10)
    world.run(2)
    assert agent.version == world.cloud.versions["robot1"] >= 4 and agent.counters["rejected_updates"] == 0
    assert agent.counters["applied"] == agent.version  # every version applied once, in order


def _affine_update(model, spec: str):
    from eclm_ros.core.strategies import Cause, Update

    return Update(KIND_NORM_AFFINE, {k: v * 1.01 for k, v in affine_state(model).items()}, spec, Cause.DISTILLED)


def test_a_restarted_cloud_resumes_versions_from_its_state(quick_model, tmp_path):
    world = World(quick_model, tmp_path, state_dir=tmp_path / "state", upload_batch=8, upload_ratio=0.3,
                  register_period_s=1.0)
    agent = world.add_edge()
    world.run(200)
    world.cloud.save()
    before = agent.version
    assert before >= 2
    world.cloud = world.start_cloud()  # restarted from its saved state
    assert world.cloud.versions["robot1"] == before
    world.run(300, start=200)
    assert agent.counters["rejected_updates"] == 0 and agent.version > before
    assert world.cloud.counters["registrations"] == 0  # the heartbeat found it in sync: no full resend

    world.state_dir = None
    world.cloud = world.start_cloud()  # a cloud that lost everything: the edge re-registers, versions go on up
    at_loss = agent.version
    world.run(300, start=500)
    assert world.cloud.counters["registrations"] == 1 and agent.version > at_loss
    assert agent.counters["rejected_updates"] == 0


def test_forged_stale_and_oversized_updates_are_refused_and_serving_goes_on(quick_model, tmp_path):
    key = generate_key()
    world = World(quick_model, tmp_path, cloud_key=key, max_update_bytes=2_000_000)  # the full first model fits
    agent = world.add_edge()
    world.run(10)
    good_version = agent.version
    assert good_version == 1
    spec = world.cloud.strategy.served_spec("robot1")
    tensors = {k: v.numpy() for k, v in affine_state(agent.runtime.model).items()}

    def update(version, base, signer=key, tensors=tensors, kind=KIND_NORM_AFFINE) -> ModelUpdate:
        bundle = pack(tensors, compress=False)
        header = UpdateHeader("robot1", f"u{version}-{base}", version, base, kind, spec)
        if signer is not None:
            scheme, key_id, sig = signature_for(header, bundle, signer)
            header = replace(header, signature_scheme=scheme, key_id=key_id, signature=sig)
        return ModelUpdate(header, bundle)

    big = {"x": np.zeros(1_000_000, np.float32)}
    forged, unsigned, stale = update(2, 1, signer=generate_key()), update(2, 1, signer=None), update(1, 0)
    altered = update(2, 1)
    altered.bundle = replace(altered.bundle, payload=altered.bundle.payload[::-1])
    for bad in (forged, unsigned, stale, altered, update(2, 1, tensors=big)):
        agent.on_update(bad)
    assert agent.counters["rejected_updates"] == 5 and agent.version == good_version
    assert {"signature", "stale", "digest", "size"} <= set(agent.reasons)
    agent.on_update(update(2, 1))  # the genuine one still lands
    assert agent.version == 2
    assert agent.on_frame(world.frames[0]).model_version == 2


def test_the_cloud_learns_only_from_uploads_their_edge_signed(quick_model, tmp_path):
    keys = tmp_path / "edge_keys"
    keys.mkdir()
    own = generate_key()
    save_key_pair(own, tmp_path / "robot1.key", keys / "robot1.pem")
    world = World(quick_model, tmp_path, edge_keys=EdgeKeys(keys), upload_batch=4, upload_ratio=0.5)
    world.add_edge("robot1", private_key=own)
    world.add_edge("robot2")  # registered, but unsigned: its uploads must not teach the cloud
    world.run(120)
    frames_by_signed = world.edges["robot1"].counters["uploaded"]
    assert world.cloud.counters["frames"] == frames_by_signed > 0
    assert world.cloud.counters["rejected_batches"] == world.edges["robot2"].counters["batches_sent"] > 0
    assert "unsigned upload" in world.cloud.last_reject


def test_replayed_uploads_and_updates_are_refused_even_after_the_edge_restarts(quick_model, tmp_path):
    """Someone on the DDS domain records a signed upload and a signed update and sends them again later: the
    cloud must not learn twice from the same frames, and an edge must not go back to an old model, even once
    it restarted and serves version 0 again (it stores nothing)."""
    cloud_key, own = generate_key(), generate_key()
    keys = tmp_path / "edge_keys"
    keys.mkdir()
    save_key_pair(own, tmp_path / "robot1.key", keys / "robot1.pem")
    world = World(quick_model, tmp_path, cloud_key=cloud_key, edge_keys=EdgeKeys(keys), upload_batch=4,
                  upload_ratio=0.5)
    batches, updates = [], []
    admit, send = world.cloud.on_samples, world.cloud.link.send_update
    world.cloud.on_samples = lambda batch: (batches.append(batch), admit(batch))[1]
    world.cloud.link.send_update = lambda edge, parts: (updates.append(parts), send(edge, parts))[1]
    world.add_edge("robot1", private_key=own)
    world.run(150)
    learned, first_versions = world.cloud.counters["batches"], len(updates)
    assert learned >= 2 and first_versions >= 2 and world.cloud.counters["rejected_batches"] == 0
    assert world.cloud.on_samples(batches[0]) is False and "replayed" in world.cloud.last_reject

    agent = world.add_edge("robot1", private_key=own)  # restarted: version 0, a new agent
    world.run(20)
    assert agent.version > max(u[0].header.version for u in updates[:first_versions - 1])
    rejected = agent.counters["rejected_updates"]
    for part in updates[0]:  # the first signed update this edge ever got, sent again
        agent.on_update(part)
    assert agent.counters["rejected_updates"] == rejected + 1 and agent.reasons["stale"] >= 1
    # over DDS the registration's reply can overtake the full update it announces: until that lands the edge
    # serves version 0, and an old update is refused because the cloud registered it at a newer version
    header = updates[0][0].header
    with pytest.raises(UpdateRejected, match="replayed update"):
        check_update(header, updates[0][0].bundle, edge_id="robot1", current_version=0,
                     public_key=cloud_key.public_key(), min_version=header.version + 1)
    check_update(header, updates[0][0].bundle, edge_id="robot1", current_version=0,
                 public_key=cloud_key.public_key(), min_version=header.version)  # the announced one passes
    world.run(150, start=20)  # the restarted edge's uploads still teach: its batch numbers continue upwards
    assert world.cloud.counters["batches"] > learned + 1
    assert world.cloud.counters["rejected_batches"] == 1


def test_run_time_settings_take_effect_and_bad_ones_are_refused(quick_model, tmp_path):
    world = World(quick_model, tmp_path, upload_batch=8, upload_ratio=0.1)
    agent = world.add_edge()
    agent.configure(upload_ratio=0.9, max_queued_batches=3)
    assert agent.selector.target_ratio == 0.9 and agent.queue.maxlen == 3
    with pytest.raises(ValueError, match="upload_ratio"):
        agent.configure(upload_ratio=1.5)
    assert agent.config.upload_ratio == 0.9  # a refused change changes nothing
    with pytest.raises(ValueError, match="update_encoding"):
        world.cloud.configure(update_encoding="bf16")


def test_camera_health_follows_the_share_of_refused_frames(quick_model, tmp_path, caplog):
    """diagnostic_updater's conventions from rates: OK while frames serve, WARN when > 5 % of the last 10 s
    were refused, ERROR when nothing has served for 5 s, OK again once good frames are back for a window."""
    world = World(quick_model, tmp_path)
    agent = world.add_edge()

    def camera():
        return next(h for h in agent.health() if h.name == "camera input")

    assert camera().level == WARN and "no frames" in camera().message
    world.run(60)
    assert camera().level == OK
    for i in range(60):  # one frame in six refused
        agent.on_frame(world.frames[i]) if i % 6 else agent.reject_frame("encoding 'bayer_rggb8' is not supported")
        world.step()
    assert camera().level == WARN and "refused" in camera().message
    for _ in range(200):  # only bad frames, for more than 5 s
        agent.reject_frame("data holds 100 bytes")
        world.step()
    assert camera().level == ERROR and "refused" in camera().message
    assert agent.counters["rejected_images"] == 210 and agent.reasons["image"] == 210
    assert len([r for r in caplog.records if "rejected image" in r.getMessage()]) <= 3  # a line per 5 s at most
    world.run(400)  # > 10 s of good frames: the refusals leave the window
    assert camera().level == OK
