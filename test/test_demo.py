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


def test_demo_refuses_bad_arguments(capsys):
    from eclm_ros.bench.demo import cli

    with pytest.raises(SystemExit):
        cli(["--schedule", "rain@3:10"])
    assert "unknown corruption" in capsys.readouterr().err
