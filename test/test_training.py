import json

import numpy as np

from eclm_ros.core.data import load_fashion_mnist
from eclm_ros.core.training import accuracy, load_checkpoint, load_edge_model, train_all


def test_quick_training_writes_manifest_and_reuses_cache(quick_cache):
    manifest = json.loads((quick_cache / "quick" / "cloud.json").read_text())
    for key in ("data", "seed", "command", "clean_test_accuracy", "params", "macs", "code_hash", "recipe"):
        assert key in manifest
    assert manifest["clean_test_accuracy"] > 0.4  # far above chance (0.1) after a minute of training
    mtime = (quick_cache / "quick" / "cloud.pt").stat().st_mtime
    again = train_all(quick=True, cache_dir=quick_cache, progress=False)
    assert (quick_cache / "quick" / "cloud.pt").stat().st_mtime == mtime
    assert again["cloud"]["clean_test_accuracy"] == manifest["clean_test_accuracy"]


def test_loaded_models_predict_and_edge_is_smaller(quick_cache):
    cloud = load_checkpoint("cloud", quick=True, cache_dir=quick_cache)
    edge = load_edge_model(quick=True, cache_dir=quick_cache)
    x, y = load_fashion_mnist("test")
    assert edge.spec.num_modules < cloud.spec.num_modules
    assert accuracy(edge, x[:500], y[:500]) > 0.3
    assert not cloud.training and np.isfinite(accuracy(cloud, x[:100], y[:100]))


def test_stale_cache_is_retrained(quick_cache, tmp_path):
    import shutil

    cache = tmp_path / "c"
    shutil.copytree(quick_cache, cache)
    manifest = cache / "quick" / "edge_small.json"
    data = json.loads(manifest.read_text())
    data["code_hash"] = "stale"
    manifest.write_text(json.dumps(data))
    train_all(quick=True, cache_dir=cache, progress=False)
    assert json.loads(manifest.read_text())["code_hash"] != "stale"
