import gzip

import cv2
import numpy as np
import pytest

from eclm_ros.core.data import (FASHION_MNIST_CLASSES, DataFormatError, DataNotFoundError, ImageFolder,
                                VideoSource, load_fashion_mnist)
from eclm_ros.core.preprocess import MEAN, STD, ImageFormatError, batch_to_array, to_model_input


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
    grey = np.full((480, 640), 255, np.uint8)
    out = to_model_input(grey)
    assert out.shape == (1, 28, 28) and out.dtype == np.float32
    np.testing.assert_allclose(out, (1 - MEAN) / STD, rtol=1e-5)
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 255
    bgr = rgb[..., ::-1].copy()
    np.testing.assert_allclose(to_model_input(rgb, "rgb"), to_model_input(bgr, "bgr"), rtol=1e-6)
    buf = np.empty((1, 28, 28), np.float32)
    assert to_model_input(grey, out=buf) is buf
    batch = batch_to_array(np.zeros((4, 28, 28), np.uint8))
    assert batch.shape == (4, 1, 28, 28)
    for bad in (np.zeros((28, 28), np.float32), np.zeros((0, 5), np.uint8), np.zeros((5, 5, 4), np.uint8)):
        with pytest.raises(ImageFormatError):
            to_model_input(bad)
