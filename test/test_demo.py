"""The main job end to end on quick models: four node processes, a report with the figures it promises."""
import json

import pytest

from node_processes import ros_available

pytestmark = pytest.mark.skipif(ros_available() is not None, reason=str(ros_available()))


def test_demo_writes_a_report(tmp_path, quick_cache, capsys):
    from eclm_ros.bench.demo import cli

    assert cli(["--quick", "--cache", str(quick_cache), "--duration", "25", "--rate", "20", "--out", str(tmp_path),
                "--schedule", "clean:100,contrast@5:100000"]) == 0
    run = next(tmp_path.iterdir())
    report = json.loads((run / "report.json").read_text())
    assert report["frames_evaluated"] > 100
    assert report["final_model_version"] >= 2 and report["updates_rejected"] == 0
    assert 0 < report["upload_ratio"] < 0.5
    assert set(report["per_segment"]) == {"0:clean", "1:contrast@5"}
    assert 0 <= report["bench_accuracy"] <= 1  # the same stream in-process, for the agreement check
    assert set(report["on_device_accuracy"]) == {"bn", "tent"} and report["best_on_device"] in ("bn", "tent")
    assert report["on_device_accuracy"][report["best_on_device"]] == max(report["on_device_accuracy"].values())
    assert set(report["on_device_per_segment"]) == set(report["per_segment"])
    assert 0 < report["first_prediction_s"] < 120
    assert (run / "accuracy.png").stat().st_size > 10_000
    md = (run / "report.md").read_text()
    assert "source model on the same frames" in md and "(best)" in md
    assert "frames" in capsys.readouterr().out  # the live progress line
    _check_bag(run / "bag", report)


def _check_bag(path, report):
    """The run's bag opens without eclm_ros (rosbags reads the definitions it carries) and holds what the
    report counts; updates without their tensors, in version order."""
    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts["/robot1/predictions"] == report["predictions"]
        assert counts["/robot1/ground_truth"] == report["frames_published"]
        assert {"/eclm/edge_status", "/diagnostics", "/robot1/bandwidth"} <= set(counts)
        assert sum(counts.values()) == report["bag_messages"]
        updates = [c for c in reader.connections if c.topic == "/eclm/updates/robot1"]
        versions = []
        for conn, _, raw in reader.messages(connections=updates):
            msg = reader.deserialize(raw, conn.msgtype)
            assert len(msg.bundle.payload) == 0 and msg.bundle.raw_size > 0 and len(msg.bundle.digest) == 64
            versions.append(msg.version)
        assert len(versions) >= 2 and versions == sorted(versions)
        assert max(versions) >= report["final_model_version"]
        first = next(reader.messages(connections=[c for c in reader.connections
                                                  if c.topic == "/robot1/predictions"]))
        assert reader.deserialize(first[2], first[0].msgtype).label


def test_demo_refuses_bad_arguments(capsys):
    from eclm_ros.bench.demo import cli

    with pytest.raises(SystemExit):
        cli(["--schedule", "rain@3:10"])
    assert "unknown corruption" in capsys.readouterr().err
