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


@pytest.mark.parametrize("weights, share", [("float16", 0.6), ("int8", 0.35)])
def test_compact_checkpoints_hold_fewer_bytes_and_load_as_float32(quick_model, tmp_path, weights, share):
    """The shipped defaults store int8 weights (``ship``): about a quarter of the bytes, they load as float32
    with the values ``as_stored`` predicts, and the model keeps its clean accuracy to half a point."""
    import torch

    cloud = quick_model("cloud")
    checkpoint.save(tmp_path / "full.pt", cloud.model, cloud.description)
    checkpoint.save(tmp_path / "small.pt", cloud.model, cloud.description, weights=weights)
    assert (tmp_path / "small.pt").stat().st_size < share * (tmp_path / "full.pt").stat().st_size
    checkpoint.save(tmp_path / "small.pt", cloud.model, cloud.description, cloud.calibration, weights=weights)
    loaded = checkpoint.load(tmp_path / "small.pt")
    expected = checkpoint.as_stored(cloud.model, weights).state_dict()
    for name, got in loaded.model.state_dict().items():
        want = expected[name]
        assert got.dtype == cloud.model.state_dict()[name].dtype and torch.equal(got, want), name
    assert loaded.calibration.shape == cloud.calibration.shape and (loaded.calibration == cloud.calibration).all()
    x, y = load_fashion_mnist("test")
    assert accuracy(loaded.model, x[:2000], y[:2000]) == pytest.approx(
        accuracy(cloud.model, x[:2000], y[:2000]), abs=0.005)
    with pytest.raises(ValueError, match="weights must be one of"):
        checkpoint.save(tmp_path / "bad.pt", cloud.model, cloud.description, weights="int4")


def test_a_forged_int8_scale_is_refused_with_the_file_named(quick_model, tmp_path):
    import torch

    edge = quick_model("edge")
    checkpoint.save(tmp_path / "edge.pt", edge.model, edge.description, weights="int8")
    blob = torch.load(tmp_path / "edge.pt", weights_only=True)
    name = next(iter(blob["scales"]))
    blob["scales"][name] = torch.ones(3, 1, 1, 1, 1)
    torch.save(blob, tmp_path / "forged.pt")
    with pytest.raises(checkpoint.ModelFileError, match="forged.pt: the weights"):
        checkpoint.load(tmp_path / "forged.pt")


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


@pytest.fixture
def no_named_cache(monkeypatch):
    monkeypatch.delenv("ECLM_ROS_CACHE", raising=False)


@pytest.mark.parametrize("name", ["cloud", "edge", "edge_small"])
def test_shipped_defaults_load_without_training_and_match_their_manifest(name, no_named_cache, monkeypatch):
    """A fresh install serves the trained defaults at once: no training, the file its manifest names (digest),
    made by the code in this tree (code hash) and as accurate as the manifest says on the clean test split."""
    from eclm_ros.training import trainer

    path = checkpoint.default_path(name)
    assert checkpoint.is_shipped(path), f"{path} is not the shipped default"
    entry = checkpoint.shipped_manifest()[name]
    assert checkpoint.file_digest(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert entry["code_hash"] == trainer.code_hash(), (
        "the shipped defaults were made by other code than this tree's: run 'eclm-ros train --force --ship'")
    monkeypatch.setattr(trainer, "train_model", lambda *a, **k: pytest.fail("a shipped default was retrained"))
    for key in ("data", "recipe", "command", "seed", "clean_test_accuracy", "params", "macs"):
        assert key in entry
    loaded = trainer.load(name)
    x, y = load_fashion_mnist("test")
    assert accuracy(loaded.model, x, y) == pytest.approx(entry["clean_test_accuracy"], abs=0.005)
    assert loaded.manifest["clean_test_accuracy"] == entry["clean_test_accuracy"]


def test_a_damaged_shipped_model_is_refused_and_a_named_cache_wins(tmp_path, monkeypatch, quick_cache):
    import shutil

    shipped = tmp_path / "weights"
    shutil.copytree(checkpoint.SHIPPED_DIR, shipped)
    monkeypatch.setattr(checkpoint, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(checkpoint, "SHIPPED_MANIFEST", shipped / "manifest.json")
    monkeypatch.delenv("ECLM_ROS_CACHE", raising=False)
    data = bytearray((shipped / "edge.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (shipped / "edge.pt").write_bytes(bytes(data))
    with pytest.raises(checkpoint.ModelFileError, match="does not match its manifest.*reinstall"):
        checkpoint.load(checkpoint.default_path("edge"))
    checkpoint.load(checkpoint.default_path("edge_small"))  # the others are intact
    assert checkpoint.default_path("edge", cache_dir=quick_cache) == quick_cache / "full" / "edge.pt"
    monkeypatch.setenv("ECLM_ROS_CACHE", str(quick_cache))
    assert checkpoint.default_path("edge") == quick_cache / "full" / "edge.pt"
    assert checkpoint.default_path("edge", quick=True) == quick_cache / "quick" / "edge.pt"
