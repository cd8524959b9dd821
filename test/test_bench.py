import json

import numpy as np

from eclm_ros.core import bench
from eclm_ros.core.bench import METHODS, BenchContext, cli

REQUIRED = {"accuracy", "per_segment", "upload_ratio", "uplink_bytes", "downlink_bytes", "frames", "wall_s"}


def test_quick_bench_end_to_end(quick_cache, tmp_path):
    out = tmp_path / "bench"
    assert cli(["--quick", "--cache", str(quick_cache), "--out", str(out), "--frames-per-segment", "16",
                "--severity", "3,5", "--batch", "16"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"severity_3", "severity_5"}
    for run in results["runs"].values():
        assert set(run["methods"]) == set(METHODS)
        for r in run["methods"].values():
            assert REQUIRED <= set(r)
            assert r["frames"] == 15 * 16 and len(r["per_segment"]) == 15 and 0 <= r["accuracy"] <= 1
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert "| tent |" in (out / "results.md").read_text()


class Spy:
    """A method that records what it is given."""

    name = "spy"

    def __init__(self):
        self.traffic = bench.Traffic()
        self.seen = []

    def step(self, images):
        self.seen.append(images)
        return np.zeros(len(images), dtype=np.int64)


def test_methods_see_identical_pixels_only(quick_cache, monkeypatch):
    spies = []

    def make_spy(ctx: BenchContext):
        spies.append(Spy())
        return spies[-1]

    monkeypatch.setitem(METHODS, "spy_a", make_spy)
    monkeypatch.setitem(METHODS, "spy_b", make_spy)
    bench.run_bench(["spy_a", "spy_b"], bench.default_streams([3], 8), 8, seed=0, quick=True, cache_dir=quick_cache)
    a, b = spies
    assert all(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 3 for x in a.seen)
    assert all(np.array_equal(x, y) for x, y in zip(a.seen, b.seen))


def test_bad_arguments_are_refused(quick_cache, tmp_path, capsys):
    import pytest

    for args in (["--severity", "7"], ["--methods", "magic"], ["--batch", "0"]):
        with pytest.raises(SystemExit):
            cli(["--quick", "--cache", str(quick_cache), "--out", str(tmp_path), *args])
    assert "magic" in capsys.readouterr().err


def test_a_stream_of_your_own(quick_cache, tmp_path):
    out = tmp_path / "own"
    assert cli(["--quick", "--cache", str(quick_cache), "--out", str(out), "--methods", "source,eclm_ros",
                "--schedule", "clean:20,fog@3:40", "--batch", "16"]) == 0
    results = json.loads((out / "results.json").read_text())
    run = results["runs"]["custom"]
    assert run["schedule"] == "clean:20,fog@3:40"
    assert set(run["methods"]["eclm_ros"]["per_segment"]) == {"0:clean", "1:fog@3"}
    assert run["methods"]["eclm_ros"]["frames"] == 60 and run["methods"]["eclm_ros"]["downlink_bytes"] > 0
