import dataclasses

import numpy as np
import pytest

from eclm_ros.sim.data import load_fashion_mnist
from eclm_ros.sim.world import (Schedule, ScheduleError, Segment, WorldStream, default_schedule,
                                 parse_schedule)

X, Y = load_fashion_mnist("test")


def _frames(stream, n):
    return np.stack([f.image for f, _ in (stream.frame(t) for t in range(n))])


def test_deterministic_under_seed():
    sched = default_schedule(3, 20, clean_start=10)
    a, b, c = (WorldStream(X, Y, sched, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(_frames(a, 60), _frames(b, 60))
    assert not np.array_equal(_frames(a, 60), _frames(c, 60))
    f1, _ = a.frame(37)
    f2, _ = WorldStream(X, Y, sched, seed=1).frame(37)  # random access gives the same frame
    np.testing.assert_array_equal(f1.image, f2.image)


def test_frames_carry_no_label():
    frame, truth = next(iter(WorldStream(X, Y, default_schedule(3, 5), seed=0)))
    assert {f.name for f in dataclasses.fields(frame)} == {"index", "image"}
    assert truth.label in range(10) and truth.environment == "gaussian_noise@3"


def test_default_schedule_is_fifteen_continual_segments():
    sched = default_schedule(5, 100, clean_start=50)
    assert len(sched.segments) == 16 and sched.period == 1550
    stream = WorldStream(X, Y, sched, seed=0)
    envs = [t.environment for _, t in (stream.frame(i) for i in (0, 49, 50, 1549))]
    assert envs == ["clean", "clean", "gaussian_noise@5", "jpeg_compression@5"]
    with pytest.raises(IndexError):
        stream.frame(1550)
    assert sum(1 for _ in stream) == 1550


def test_gradual_transition_blends():
    sched = Schedule((Segment(None, 0, 10), Segment("brightness", 5, 20, transition=10)))
    stream = WorldStream(X, Y, sched, seed=0)
    k = [stream.frame(t)[1] for t in range(30)]
    assert k[10].environment == "brightness@5"
    base = [X[stream.order[t]].astype(float).mean() for t in range(30)]
    lift = [stream.frame(t)[0].image.astype(float).mean() - base[t] for t in range(30)]
    assert lift[10] < lift[15] < lift[25]  # the shift grows over the transition
    assert abs(lift[5]) < 1e-9


def test_repeat():
    rep = parse_schedule("clean:3,fog@2:4*")
    stream = WorldStream(X, Y, rep, seed=0)
    assert stream.frame(7)[1].environment == "clean" and stream.frame(10)[1].environment == "fog@2"


def test_parse_round_trip_and_errors():
    text = "clean:200,fog@3:500,gaussian_noise@5:500/100*"
    assert parse_schedule(text).to_string() == text
    for bad, why in [("", "empty"), ("fog:10", "needs a severity"), ("clean@2:5", "no severity"),
                     ("rain@3:5", "unknown corruption"), ("fog@9:5", "1..5"), ("fog@3", "cannot parse"),
                     ("fog@3:5/9", "transition")]:
        with pytest.raises(ScheduleError, match=why):
            parse_schedule(bad)


def test_batches_cover_the_stream_in_order():
    stream = WorldStream(X, Y, default_schedule(3, 10), seed=0)
    seen = [t.index for _, truths in stream.batches(32) for t in truths]
    assert seen == list(range(150))


def test_a_mixed_segment_gives_each_frame_its_own_corruption_reproducibly():
    from eclm_ros.sim.corruptions import CORRUPTIONS, corrupt

    sched = parse_schedule("clean:5,mixed@5:300")
    stream = WorldStream(X, Y, sched, seed=4)
    truths = [stream.frame(t)[1] for t in range(305)]
    assert {t.environment for t in truths[5:]} == {"mixed@5"} and truths[0].corruption is None
    drawn = [t.corruption for t in truths[5:]]
    assert set(drawn) == set(CORRUPTIONS)  # 300 draws of 15: every corruption appears
    assert max(drawn.count(c) for c in CORRUPTIONS) < 45  # and none dominates (expected 20 each)
    assert sum(a != b for a, b in zip(drawn, drawn[1:])) > 250  # neighbours differ: no per-batch domain
    again = WorldStream(X, Y, sched, seed=4)
    np.testing.assert_array_equal(_frames(stream, 40), _frames(again, 40))
    frame, truth = stream.frame(17)  # the frame is exactly its drawn corruption of its test image
    img = X[stream.order[17]]
    np.testing.assert_array_equal(frame.image, corrupt(img, truth.corruption, 5, np.random.default_rng([4, 17, 0])))
    assert parse_schedule("mixed@3:100/20*").to_string() == "mixed@3:100/20*"


def test_the_world_sets_the_strengths_of_the_same_frames():
    sched = default_schedule(5, 20)
    mild, harsh = (WorldStream(X, Y, sched, seed=0, world=w) for w in ("mild", "harsh"))
    assert [t.label for _, t in (mild.frame(i) for i in range(300))] == \
        [t.label for _, t in (harsh.frame(i) for i in range(300))]  # same images in the same order
    changed = {w: np.abs(_frames(s, 20).astype(float) - X[s.order[:20]]).mean() for w, s in
               (("mild", mild), ("harsh", harsh))}  # the first segment: gaussian noise at severity 5
    assert changed["harsh"] > 2 * changed["mild"], changed
    with pytest.raises(ScheduleError, match="unknown world"):
        WorldStream(X, Y, sched, world="arctic")
