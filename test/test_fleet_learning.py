"""The cloud's learning for a fleet, without DDS: one network per structure shared by every edge (no model
copy per edge), many edges' steps batched with each edge's result that of its own step, a learning queue that
serves edges fairly within its bound, upload-to-update latency measured by the edge, and the same learning on
Ray workers (skipped without Ray)."""
from __future__ import annotations

import copy
import math
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from node_processes import wait_for

from eclm_ros.core.adapt.tent import collect_params, configure_model, softmax_entropy
from eclm_ros.core.coordinator import Coordinator, CoordinatorConfig
from eclm_ros.core.distill import DistillConfig, DistillEngine, confidence_weights
from eclm_ros.core.messages import KIND_NORM_AFFINE, Profile, Registration, SampleBatch
from eclm_ros.core.norm import affine_state
from eclm_ros.core.selection import encode_frames
from eclm_ros.core.shared_norm import SharedModel
from eclm_ros.core.strategies import make_strategy
from eclm_ros.core.transport import InMemoryNetwork, SimClock
from eclm_ros.sim.corruptions import corrupt
from eclm_ros.sim.data import load_fashion_mnist

X, _ = load_fashion_mnist("test")


def _frames(n: int, name: str = "fog", start: int = 0) -> np.ndarray:
    rng = np.random.default_rng(start)
    return np.stack([corrupt(img, name, 5, rng) for img in X[start:start + n]])


class ReferenceCema:
    """CEMA's cloud step as one edge's own pair of models would take it (a copy of the teacher, torch's SGD):
    what the shared networks must reproduce for every edge."""

    def __init__(self, teacher, student, to_tensor, cfg: DistillConfig, seed: int) -> None:
        self.teacher, self.student = configure_model(copy.deepcopy(teacher)), configure_model(copy.deepcopy(student))
        self.opt_t = torch.optim.SGD(collect_params(self.teacher), lr=cfg.teacher_lr, momentum=cfg.momentum)
        self.opt_s = torch.optim.SGD(collect_params(self.student), lr=cfg.student_lr, momentum=cfg.momentum)
        self.to_tensor, self.cfg, self.e_max = to_tensor, cfg, cfg.e_max_factor * math.log(10)
        self.replay, self.rng = [], np.random.default_rng(seed)

    def step(self, new: np.ndarray) -> dict[str, torch.Tensor]:
        self.replay.extend(new)
        images = new
        if len(self.replay) >= self.cfg.replay_min:
            idx = self.rng.choice(len(self.replay), size=min(self.cfg.replay_per_step, len(self.replay)), replace=False)
            images = np.concatenate([new, np.stack([self.replay[i] for i in idx])])
        x = self.to_tensor(images)
        t = self.teacher(x)
        ent = softmax_entropy(t)
        (ent * confidence_weights(ent, self.e_max)).mean().backward()
        self.opt_t.step()
        self.opt_t.zero_grad()
        t = t.detach()
        s = self.student(x)
        s_ent = softmax_entropy(s)
        loss = (3 * (s_ent * confidence_weights(s_ent, self.e_max)).mean()
                + 3 * F.kl_div(F.log_softmax(s, 1), F.softmax(t, 1), reduction="batchmean")
                + F.cross_entropy(s, t.argmax(1)))
        loss.backward()
        self.opt_s.step()
        self.opt_s.zero_grad()
        return affine_state(self.student)


def test_shared_networks_learn_for_each_edge_what_its_own_models_would(quick_model, to_tensor):
    """Three edges with uploads of different sizes, learned in one batched step each round over one teacher and
    one student network, end exactly where three separate pairs of models end (float rounding apart)."""
    teacher, student = quick_model("cloud").model, quick_model("edge").model
    cfg = DistillConfig(replay_min=48)
    engine = DistillEngine(teacher, 10, to_tensor, cfg)
    net = SharedModel(student)
    edges = [engine.new_edge(net, seed=i) for i in range(3)]
    references = [ReferenceCema(teacher, student, to_tensor, cfg, seed=i) for i in range(3)]
    for step in range(4):
        uploads = [_frames(16 + 8 * i, ("fog", "contrast", "gaussian_noise")[i], start=100 * step + 10 * i)
                   for i in range(3)]
        for e, batch in zip(edges, uploads):
            e.add(batch)
        states = engine.step(edges)
        for state, ref, batch in zip(states, references, uploads):
            expected = ref.step(batch)
            for name, value in expected.items():
                torch.testing.assert_close(state[name], value, atol=2e-5, rtol=1e-4, msg=f"step {step} {name}")
    assert [e.steps for e in edges] == [4, 4, 4]
    # every edge learned something different (its own environment), from one copy of each network
    assert not torch.allclose(edges[0].student.params, edges[1].student.params)
    assert len({id(e.student_net) for e in edges}) == 1


def test_a_fleet_shares_one_teacher_and_one_network_per_structure(quick_model):
    """Registering a hundred edges of two budgets keeps one cloud network and two sub-model networks; what the
    cloud holds per edge is its affine vectors (a few KB), not a model."""
    cloud = quick_model("cloud")
    strategy = make_strategy("eclm_ros", cloud)
    small = Profile()
    tiny = Profile(max_macs=strategy.budget(small).max_macs // 4)
    for i in range(100):
        strategy.register(f"robot{i}", tiny if i % 4 == 2 else small)
    sessions = list(strategy.sessions.values())
    assert len({id(s.submodel.net) for s in sessions}) == 2 == len({s.spec_json for s in sessions})
    assert len({id(s.learner.student_net) for s in sessions}) == 2
    teacher_bytes = strategy.engine.teacher.nbytes
    per_edge = max(s.learner.nbytes for s in sessions)
    assert per_edge < 0.05 * teacher_bytes, (per_edge, teacher_bytes)


def _batch(edge: str, seq: int, frames: np.ndarray) -> SampleBatch:
    return SampleBatch(edge, seq, 1, "png", encode_frames(list(frames)), [(28, 28, 1)] * len(frames),
                       [(0, 0)] * len(frames), [0] * len(frames), [1.0] * len(frames),
                       np.full((len(frames), 10), 0.1, np.float32))


class Sent:
    """A cloud link that keeps what it is given: (edge, learned batch) of every update."""

    def __init__(self) -> None:
        self.updates: list[tuple[str, int, int]] = []

    def send_update(self, edge_id: str, parts: list) -> None:
        self.updates.append((edge_id, parts[0].header.kind, parts[0].learned_batch_seq))


def test_a_flooding_edge_cannot_crowd_out_the_others_and_updates_say_what_they_learned(quick_model):
    """A full queue drops from the edge holding the most: an edge sending 40 batches keeps at most its share,
    the two quiet edges lose nothing, and rounds take one batch of each edge in turn."""
    link = Sent()
    cloud = Coordinator(make_strategy("distil", quick_model("cloud"), min_step_frames=1, holdout_every=0), link,
                        CoordinatorConfig(max_pending_batches=6, round_frames=48))
    for edge in ("flood", "quiet1", "quiet2"):
        assert cloud.register(Registration(edge, Profile(), 0)).accepted
    frames = _frames(16)
    for seq in range(1, 41):
        cloud.on_samples(_batch("flood", seq, frames))
        if seq in (20, 30):
            for quiet in ("quiet1", "quiet2"):
                assert cloud.on_samples(_batch(quiet, seq, frames))
    assert cloud.queued == 6 and cloud.counters["dropped_batches"] == 40 - 2
    assert [len(cloud.waiting[e]) for e in ("flood", "quiet1", "quiet2")] == [2, 2, 2]
    first = cloud.process(max_jobs=1)  # one round: one batch of each edge (3 x 16 frames = round_frames)
    assert first == 1 and cloud.counters["learned_batches"] == 3
    cloud.process()
    assert cloud.queued == 0 and cloud.counters["learned_batches"] == 6
    learned = [(edge, seq) for edge, kind, seq in link.updates if kind == KIND_NORM_AFFINE]
    assert learned == [("flood", 5), ("quiet1", 20), ("quiet2", 20), ("flood", 6), ("quiet1", 30), ("quiet2", 30)]
    assert cloud.on_samples(_batch("quiet1", 41, frames)) and cloud.queued == 1  # room again once learned


def test_a_backlog_paces_the_extra_steps_so_a_busy_cloud_learns_from_more_uploads(quick_model, monkeypatch):
    """The restyled views and the extra student steps on them scale with what waits: none with a round's worth
    queued behind this one (CEMA's losses alone, the cheapest step), then back by a quarter a round once the
    queue is empty (a drained cloud does not refill its queue with one costly round), reported on /diagnostics."""
    strategy = make_strategy("distil", quick_model("cloud"), config=DistillConfig(source_steps=4), min_step_frames=1,
                             holdout_every=0)
    steps, restyled = [], []
    learn_source, restyle = strategy.engine._learn_source, strategy.engine._restyled
    monkeypatch.setattr(strategy.engine, "_learn_source", lambda *a: steps.append(1) or learn_source(*a))
    monkeypatch.setattr(strategy.engine, "_restyled", lambda edges, k: restyled.append(k) or restyle(edges, k))
    cloud = Coordinator(strategy, Sent(), CoordinatorConfig(round_frames=48))
    for edge in ("a", "b", "c"):
        assert cloud.register(Registration(edge, Profile(), 0)).accepted
    frames = _frames(16)
    for seq in (1, 2):
        for edge in ("a", "b", "c"):
            assert cloud.on_samples(_batch(edge, seq, frames))
    assert cloud.process(max_jobs=1) == 1 and cloud.spare == 0.0 and steps == restyled == []  # 3 batches wait
    cloud.process()
    assert cloud.queued == 0 and cloud.spare == 0.25 and len(steps) == 1 and restyled == [16] * 2
    for seq in (3, 4, 5):
        assert cloud.on_samples(_batch("a", seq, frames)) and cloud.process() == 1
    assert cloud.spare == 1.0 and len(steps) == 1 + 2 + 3 + 4 and restyled[2:] == [32] * 3 + [48] * 4 + [64] * 5
    uploads = next(h.values for h in cloud.health() if h.name == "uploads")
    assert uploads["learning_pace"] == "1.00"
    strategy.pace(0.5)
    assert strategy.learn([("a", frames)]) and len(steps) == 10 + 2 and restyled[14:] == [32] * 3


def test_link_estimates_uploads_and_health_never_wait_for_a_learning_step(quick_model, monkeypatch):
    """A learning step holds the strategy for seconds (a fleet round for tens of seconds); a monitor's estimate,
    an upload and /diagnostics must not queue behind it, or the cloud node's handlers stall with it."""
    strategy = make_strategy("distil", quick_model("cloud"), min_step_frames=1, holdout_every=0)
    assert not strategy.concurrent  # the coordinator's lock guards it
    entered, release = threading.Event(), threading.Event()
    learn = strategy.learn
    monkeypatch.setattr(strategy, "learn", lambda batches: entered.set() or release.wait(60) and learn(batches))
    cloud = Coordinator(strategy, Sent())
    assert cloud.register(Registration("robot1", Profile(), 0)).accepted
    assert cloud.on_samples(_batch("robot1", 1, _frames(16)))
    cloud.start()
    try:
        assert entered.wait(60), "the learning thread never took the batch"
        answers = []
        handler = threading.Thread(target=lambda: answers.extend([
            cloud.on_link("robot1", 2e6), cloud.on_samples(_batch("robot1", 2, _frames(16))),
            [h.name for h in cloud.health()]]))
        handler.start()
        handler.join(timeout=30)
        assert not handler.is_alive(), "a handler waited for the learning step"
        assert not release.is_set() and cloud.downlinks["robot1"] == 2e6 and answers[1] is True
        assert answers[2] == ["edges", "uploads", "updates", "state"]
        release.set()  # the step goes on, then the upload admitted meanwhile is learned from
        wait_for(lambda: cloud.counters["learned_batches"] >= 2, 120, "the upload admitted during the step")
        assert cloud.counters["learned_batches"] == 2
    finally:
        release.set()
        cloud.close()


def test_the_edge_measures_upload_to_update_latency_on_its_clock(quick_model):
    from eclm_ros.core.edge_agent import EdgeAgent, EdgeConfig
    from eclm_ros.core.edge_runtime import make_runtime

    clock = SimClock()
    net = InMemoryNetwork(clock)
    cloud = Coordinator(make_strategy("distil", quick_model("cloud"), min_step_frames=8), net.cloud_link(),
                        clock=clock)
    net.serve(cloud)
    edge = quick_model("edge")
    agent = EdgeAgent(make_runtime("onnx", edge.model), edge.description, net.connect("robot1"),
                      EdgeConfig(edge_id="robot1", upload_ratio=1.0, upload_batch=8), clock=clock, threaded=False)
    net.attach("robot1", agent)
    frames = _frames(160)
    for i, frame in enumerate(frames):
        clock.advance(0.1)
        agent.on_frame(frame)
        agent.tick()
        net.deliver()
        if cloud.queued:
            clock.advance(0.25)  # the cloud's step takes 0.25 s
        cloud.process()
        net.deliver()
    latencies = list(agent.update_latencies)
    assert len(latencies) >= 3 and all(0.24 < s < 0.26 for s in latencies), latencies
    values = next(h.values for h in agent.health() if h.name == "updates")
    assert int(values["learned_uploads"]) == len(latencies) and float(values["upload_to_update_p50_ms"]) > 200


def test_learning_on_ray_workers_matches_learning_in_process(quick_model):
    """Four edges placed on two Ray workers learn what one in-process strategy learns for them; a merge round
    spans both workers, and the state of one restores into the other."""
    pytest.importorskip("ray")
    cloud = quick_model("cloud")
    local = make_strategy("eclm_ros", cloud, min_step_frames=16, min_holdout=8)
    remote = make_strategy("eclm_ros", quick_model("cloud"), min_step_frames=16, min_holdout=8, ray_workers=2)
    try:
        assert remote.lanes == 2 and "2 Ray workers" in remote.summary
        edges = [f"robot{i}" for i in range(4)]
        for e in edges:
            assert local.register(e, Profile()).cause == remote.register(e, Profile()).cause
        assert sorted(remote.lane(e) for e in edges) == [0, 0, 1, 1]
        for step in range(3):
            batches = [(e, _frames(24, start=50 * step + 7 * i)) for i, e in enumerate(edges)]
            ours, theirs = local.learn(batches), remote.learn(batches)
            assert set(ours) == set(theirs) == set(edges)
            for e in edges:
                for name, value in ours[e].tensors.items():
                    torch.testing.assert_close(theirs[e].tensors[name], value, atol=2e-5, rtol=1e-4)
        _, decisions_local = local.aggregate()
        _, decisions_remote = remote.aggregate()  # one group of the four edges, though they learn on two workers
        assert [set(d.edges) for d in decisions_remote] == [set(d.edges) for d in decisions_local] == [set(edges)]
        before = {e: acc[0] for d in decisions_local for e, acc in zip(d.edges, d.accuracy)}
        for e, acc in zip(decisions_remote[0].edges, decisions_remote[0].accuracy):
            assert abs(acc[0] - before[e]) < 0.12  # held-out accuracy: at most one frame of nine apart
        with pytest.raises(KeyError, match="not registered"):
            remote.learn([("stranger", _frames(16))])
        restored = make_strategy("eclm_ros", cloud)
        restored.load_state_dict(copy.deepcopy(remote.state_dict()))
        for e in edges:
            torch.testing.assert_close(restored.sessions[e].learner.student_state(),
                                       local.sessions[e].learner.student_state(), atol=2e-5, rtol=1e-4)
    finally:
        remote.close()


def test_restyled_labelled_views_keep_each_edges_result_its_own(quick_model, to_tensor):
    """With the cloud's labelled views restyled to each edge's uploads, three edges learned in one batched step
    still end where three engines of one edge each end: every edge draws its views from its own generator."""
    from eclm_ros.core.restyle import LabelledViews

    cloud, student = quick_model("cloud"), quick_model("edge").model
    source = LabelledViews(cloud.calibration, cloud.model, to_tensor)
    cfg = DistillConfig(replay_min=48, source_steps=2)
    fleet = DistillEngine(cloud.model, 10, to_tensor, cfg, source=source)
    net = SharedModel(student)
    edges = [fleet.new_edge(net, seed=i) for i in range(3)]
    alone = [DistillEngine(cloud.model, 10, to_tensor, cfg, source=source) for _ in range(3)]
    singles = [engine.new_edge(SharedModel(student), seed=i) for i, engine in enumerate(alone)]
    for step in range(3):
        uploads = [_frames(16 + 8 * i, ("fog", "contrast", "gaussian_noise")[i], start=100 * step + 10 * i)
                   for i in range(3)]
        for e, single, batch in zip(edges, singles, uploads):
            e.add(batch)
            single.add(batch)
        states = fleet.step(edges)
        for state, engine, single in zip(states, alone, singles):
            expected = engine.step([single])[0]
            for name, value in expected.items():
                torch.testing.assert_close(state[name], value, atol=2e-5, rtol=1e-4, msg=f"step {step} {name}")
    assert not torch.allclose(edges[0].student.params, edges[1].student.params)
