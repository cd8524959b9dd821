import gzip

import cv2
import numpy as np
import pytest

from eclm_ros.core.description import DescriptionError, ModelDescription
from eclm_ros.core.preprocess import ImageFormatError, Preprocessor
from eclm_ros.sim.data import (FASHION_MNIST_CLASSES, DataFormatError, DataNotFoundError, ImageFolder, VideoSource,
                               fashion_mnist_description, load_fashion_mnist)


def test_fashion_mnist_from_debian():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(len(FASHION_MNIST_CLASSES)))
    assert not x.flags.writeable  # a shared cache must not be changed by one user
    assert len(load_fashion_mnist("train")[0]) == 60000


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(DataNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")


def test_corrupt_idx_file_rejected(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + bytes(100)))
    with pytest.raises(DataFormatError, match="magic"):
        load_fashion_mnist("test", root=tmp_path)


def test_image_folder_and_video(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(tmp_path / "imgs" / cls / f"{i}.png"), np.full((40, 30), 50 * i, np.uint8))
    (tmp_path / "imgs" / "dog" / "broken.png").write_bytes(b"not a png")
    folder = ImageFolder(tmp_path / "imgs")
    assert folder.classes == ["cat", "dog"] and len(folder) == 7
    with pytest.raises(DataFormatError, match="cannot be decoded"):
        folder[len(folder) - 1 if folder.samples[-1][0].name == "broken.png" else 3]
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    for i in range(5):
        writer.write(np.full((24, 32, 3), 40 * i, np.uint8))
    writer.release()
    frames = list(VideoSource(str(path)))
    assert len(frames) == 5 and frames[0].shape == (24, 32, 3)
    with pytest.raises(DataNotFoundError, match="cannot open"):
        VideoSource(str(tmp_path / "missing.avi"))


def test_preprocess_any_size_and_encoding():
    desc = fashion_mnist_description()
    pre = Preprocessor(desc)
    grey = np.full((480, 640), 255, np.uint8)
    view, out = pre.frame_input(grey)
    assert view.shape == (28, 28) and out.shape == (1, 28, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, (1 - desc.mean[0]) / desc.std[0], rtol=1e-5)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    bgr = rgb[..., ::-1].copy()
    np.testing.assert_allclose(pre.frame_input(rgb, "rgb")[1], pre.frame_input(bgr, "bgr")[1], rtol=1e-6)
    buf = np.empty((1, 28, 28), np.float32)
    assert pre.to_input(view, out=buf) is buf
    assert pre.batch(np.zeros((4, 28, 28), np.uint8)).shape == (4, 1, 28, 28)
    for bad in (np.zeros((28, 28), np.float32), np.zeros((0, 5), np.uint8), np.zeros((5, 5, 4), np.uint8)):
        with pytest.raises(ImageFormatError):
            pre.frame_input(bad)


def test_colour_model_views_and_normalisation():
    """A 3-channel 32x24 description: grey frames are replicated, bgr is reordered, each channel normalised
    with its own mean and std."""
    desc = ModelDescription((24, 32), 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5), ("a", "b", "c", "d"))
    pre = Preprocessor(desc)
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 255, 51
    view, x = pre.frame_input(rgb[..., ::-1].copy(), "bgr")
    assert view.shape == (24, 32, 3) and x.shape == (3, 24, 32)
    np.testing.assert_allclose(x[:, 0, 0], [(1 - 0.5) / 0.2, (0 - 0.4) / 0.25, (0.2 - 0.3) / 0.5], rtol=1e-5)
    grey_view, _ = pre.frame_input(np.full((10, 10), 7, np.uint8))
    assert grey_view.shape == (24, 32, 3) and (grey_view == 7).all()
    np.testing.assert_allclose(pre.batch(np.stack([view, view]))[1], x, rtol=1e-6)


def test_description_round_trip_and_refusals():
    desc = fashion_mnist_description().with_architecture({"name": "small_cnn", "config": {"widths": [4]}})
    assert ModelDescription.from_json(desc.to_json()) == desc
    assert desc.num_classes == 10 and desc.input_shape(2) == (2, 1, 28, 28)
    for bad in (dict(channels=2), dict(mean=(0.1, 0.2)), dict(std=(0.0,)), dict(labels=("a", "a"))):
        with pytest.raises(DescriptionError):
            ModelDescription(**{**dict(input_size=(28, 28), channels=1, mean=(0.1,), std=(0.2,),
                                       labels=("a", "b")), **bad})
    with pytest.raises(DescriptionError, match="not a model description"):
        ModelDescription.from_json("{}")
