"""`eclm-ros bench-edge --quick` end to end (runtimes, updates, drops and, where ROS is built, the DDS
transport): every figure the issue asks for lands in results.json and results.md."""
import json

from node_processes import ros_available

from eclm_ros.bench.edge import RUNTIMES, cli

REQUIRED = {"fps", "p99_ms", "selection_overhead", "affine_apply_ms", "module_apply_ms",
            "frames_dropped_during_updates", "e2e_p99_ms", "e2e_delivery_ratio", "update_20mb_delivered"}


def test_quick_bench_edge_writes_every_figure(quick_cache, tmp_path):
    out = tmp_path / "bench-edge"
    transport = ros_available() is None
    args = ["--quick", "--cache", str(quick_cache), "--out", str(out), "--seconds", "1", "--e2e-frames", "30",
            "--update-count", "2"]
    assert cli(args + ([] if transport else ["--no-transport"])) == 0
    r = json.loads((out / "results.json").read_text())
    assert REQUIRED <= set(r)
    assert set(r["fps"]) == set(r["p99_ms"]) == set(RUNTIMES)
    assert all(r["fps"][k] > 0 and r["p99_ms"][k] > 0 for k in RUNTIMES)
    assert r["affine_apply_ms"] > 0 and r["module_apply_ms"] > 0
    assert isinstance(r["frames_dropped_during_updates"], int)
    for kind in ("onnx", "torch"):
        d = r["drops"][kind]
        assert d["frames"] == 30 and d["updates"]["failed"] == 0
        assert d["updates"]["affine"] > 0
    if transport:
        assert 0 < r["e2e_delivery_ratio"] <= 1 and r["e2e_p99_ms"] > 0
        assert r["e2e_initial_model_served"] is True  # no cloud: the edge serves its initial model
        assert r["update_20mb_delivered"] == 2
        assert set(r["e2e"]) == set(r["update_20mb"]) == {"shipped", "none"}
    md = (out / "results.md").read_text()
    assert "| ort_tuned |" in md and "Goals" in md
