"""A user's own data: `eclm-ros train --data DIR` and `eclm-ros bench --data DIR` on a generated image folder
(colour, 32x32, four classes), and the message each broken folder gets."""
import json

import cv2
import numpy as np
import pytest

from eclm_ros.cli import main
from eclm_ros.core import checkpoint
from eclm_ros.sim.data import DataFormatError, DataNotFoundError, image_folder
from eclm_ros.training.trainer import data_cache
from user_models import LABELS, SIZE, write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("shapes"), train=192, test=128, size=SIZE)


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    """`eclm-ros train --data DIR --quick` into a private cache, once for the module."""
    cache = tmp_path_factory.mktemp("cache")
    assert main(["train", "--data", str(folder), "--quick", "--cache", str(cache)]) == 0
    return cache


def test_a_folder_becomes_a_dataset_with_its_own_input(folder):
    data = image_folder(folder)
    d = data.description
    assert d.labels == tuple(sorted(LABELS)) and d.input_size == (SIZE, SIZE) and d.channels == 3
    x, y = data.split("test")
    assert x.shape == (128, SIZE, SIZE, 3) and x.dtype == np.uint8 and set(y) <= set(range(4))
    # normalisation from the train split's own pixels, per channel
    train = data.split("train")[0].reshape(-1, 3) / 255.0
    assert np.allclose(d.mean, train.mean(0), atol=1e-3) and np.allclose(d.std, train.std(0), atol=1e-3)
    assert image_folder(folder).key == data.key  # same contents, same cache
    assert image_folder(folder, (24, 24)).description.input_size == (24, 24)


def test_train_on_a_folder_makes_models_of_its_input_and_labels(folder, trained):
    where = checkpoint.cache_path("cloud", True, data_cache(image_folder(folder), trained)).parent
    assert where.parent.parent.name == "data" and where.is_relative_to(trained)
    for name in ("cloud", "edge", "edge_small"):
        ckpt = checkpoint.load(where / f"{name}.pt")
        assert ckpt.description.labels == tuple(sorted(LABELS)) and ckpt.description.channels == 3
        assert ckpt.description.input_size == (SIZE, SIZE)
        assert ckpt.model.input_shape == (1, 3, SIZE, SIZE) and ckpt.model.num_classes == 4
        manifest = json.loads((where / f"{name}.json").read_text())
        assert str(folder.resolve()) in manifest["data"]
        assert manifest["clean_test_accuracy"] > 0.55  # four classes: chance is 0.25
    # the Fashion-MNIST quick models are not in that folder, and a second run reuses the cache
    mtime = (where / "cloud.pt").stat().st_mtime
    assert main(["train", "--data", str(folder), "--quick", "--cache", str(trained)]) == 0
    assert (where / "cloud.pt").stat().st_mtime == mtime
    assert not (trained / "quick" / "cloud.pt").exists()


def test_bench_on_a_folder_streams_its_test_images_through_every_method(folder, trained, tmp_path):
    out = tmp_path / "bench"
    methods = "source,bn,tent,cema,eclm_ros"
    assert main(["bench", "--data", str(folder), "--quick", "--cache", str(trained), "--severity", "5",
                 "--frames-per-segment", "12", "--methods", methods, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["labels"] == sorted(LABELS) and str(folder.resolve()) in results["config"]["data"]
    assert results["models"]["edge"]["clean_accuracy"] > 0.55
    run = results["runs"]["severity_5"]["methods"]
    assert set(run) == set(methods.split(","))
    for res in run.values():
        assert res["frames"] == 15 * 12 and 0.0 <= res["accuracy"] <= 1.0
    assert run["eclm_ros"]["uplink_bytes"] > 0 and run["eclm_ros"]["updates"] >= 1
    assert run["source"]["uplink_bytes"] == 0


def _folder_with(tmp_path, classes_train, classes_test, images=None):
    for split, classes in (("train", classes_train), ("test", classes_test)):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / split / c / "a.png"), np.full((20, 20, 3), 90, np.uint8))
    for rel, img in (images or {}).items():
        path = tmp_path / rel
        if isinstance(img, bytes):
            path.write_bytes(img)
        else:
            cv2.imwrite(str(path), img)
    return tmp_path


def test_broken_folders_get_a_message_naming_the_file_and_the_fix(tmp_path, capsys):
    with pytest.raises(DataNotFoundError, match="train/<class>/<image>"):
        image_folder(tmp_path / "nothing")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "test").mkdir()
    with pytest.raises(DataFormatError, match="no class sub-folders"):
        image_folder(tmp_path / "empty")
    with pytest.raises(DataFormatError, match="same class folders"):
        image_folder(_folder_with(tmp_path / "mismatch", ["a", "b"], ["a", "c"]))
    with pytest.raises(DataFormatError, match="at least two"):
        image_folder(_folder_with(tmp_path / "one", ["a"], ["a"]))
    broken = _folder_with(tmp_path / "broken", ["a", "b"], ["a", "b"], {"train/b/bad.png": b"not a png"})
    with pytest.raises(DataFormatError, match="bad.png cannot be decoded"):
        image_folder(broken)
    mixed = _folder_with(tmp_path / "mixed", ["a", "b"], ["a", "b"],
                         {"train/b/big.png": np.zeros((30, 40, 3), np.uint8)})
    with pytest.raises(DataFormatError, match="--input-size"):
        image_folder(mixed)
    assert image_folder(mixed, (16, 16)).split("train")[0].shape == (3, 16, 16)  # resized; grey: all equal
    # the commands exit non-zero with the message, before any training
    for argv in (["train", "--data", str(mixed), "--quick", "--cache", str(tmp_path / "c")],
                 ["bench", "--data", str(broken), "--quick", "--cache", str(tmp_path / "c")],
                 ["train", "--data", str(mixed), "--input-size", "4x", "--quick"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--input-size H,W" in err and "bad.png cannot be decoded" in err and "H,W (e.g. 32,32)" in err
    assert not (tmp_path / "c").exists()
