import json

import numpy as np

import pytest

from eclm_ros.core import checkpoint
from eclm_ros.sim.data import fashion_mnist_description, load_fashion_mnist
from eclm_ros.training.trainer import accuracy, train_all


def test_quick_training_writes_manifest_and_reuses_cache(quick_cache):
    manifest = json.loads((quick_cache / "quick" / "cloud.json").read_text())
    for key in ("data", "seed", "command", "clean_test_accuracy", "params", "macs", "code_hash", "recipe"):
        assert key in manifest
    assert manifest["clean_test_accuracy"] > 0.4  # far above chance (0.1) after a minute of training
    mtime = (quick_cache / "quick" / "cloud.pt").stat().st_mtime
    again = train_all(quick=True, cache_dir=quick_cache, progress=False)
    assert (quick_cache / "quick" / "cloud.pt").stat().st_mtime == mtime
    assert again["cloud"]["clean_test_accuracy"] == manifest["clean_test_accuracy"]


def test_checkpoints_carry_what_the_nodes_need(quick_model):
    """Description (input, normalisation, labels, architecture), calibrated weights, and for the cloud its
    calibration views: no node needs the data set."""
    cloud, edge = quick_model("cloud"), quick_model("edge")
    assert cloud.description.labels == edge.description.labels == fashion_mnist_description().labels
    assert edge.description.architecture["config"]["module_ids"] == [list(s) for s in edge.model.spec.stages]
    assert cloud.calibration is not None and cloud.calibration.shape[1:] == (28, 28)
    assert edge.calibration is None and edge.manifest["derived_from"] == "cloud"


def test_missing_or_foreign_model_files_name_the_fix(tmp_path):
    with pytest.raises(checkpoint.ModelFileError, match="eclm-ros train"):
        checkpoint.load(tmp_path / "edge.pt", fix="run 'eclm-ros train'")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(checkpoint.ModelFileError, match="not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
    import torch

    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(checkpoint.ModelFileError, match="not an eclm_ros checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")


def test_loaded_models_predict_and_edge_is_smaller(quick_model):
    cloud, edge = quick_model("cloud").model, quick_model("edge").model
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
