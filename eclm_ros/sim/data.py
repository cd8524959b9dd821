"""Data sources: Fashion-MNIST from Debian's package, an image folder, a video file or webcam.

Everything loads from local files: robots and CI machines have no route to a data hub.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..core.description import ModelDescription

FASHION_MNIST_DIR = Path(os.environ.get("ECLM_ROS_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # train-split pixel statistics (0..1)
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")


def fashion_mnist_description() -> ModelDescription:
    """The default models' input: 28x28 grey Fashion-MNIST, its train-split normalisation, its ten classes."""
    return ModelDescription((28, 28), 1, (FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,), FASHION_MNIST_CLASSES)


class DataNotFoundError(FileNotFoundError):
    """A data set is not on this machine; the message says how to get it."""


class DataFormatError(ValueError):
    """A data file exists but is not what it claims to be."""


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        raw = gzip.decompress(path.read_bytes())
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"{path} is missing: install Debian's 'dataset-fashion-mnist' package (run 'make setup', or "
            f"'apt-get install dataset-fashion-mnist'), or point ECLM_ROS_FASHION_MNIST at a copy") from exc
    except (OSError, EOFError) as exc:
        raise DataFormatError(f"{path} is not a readable gzip file: {exc}") from exc
    header = np.frombuffer(raw, dtype=">i4", count=1 + ndim)
    if header[0] != magic:
        raise DataFormatError(f"{path}: IDX magic {header[0]:#x}, expected {magic:#x}")
    shape = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
    if data.size != int(np.prod(shape)):
        raise DataFormatError(f"{path}: {data.size} values for shape {shape} (truncated?)")
    return data.reshape(shape)


@lru_cache(maxsize=2)
def load_fashion_mnist(split: str = "test", root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N,28,28] and labels int64 [N] of one split ("train": 60k, "test": 10k).

    The arrays are cached and read-only: copy before changing them.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    images = _read_idx(root / _FILES[split][0], 0x803, 3)
    labels = _read_idx(root / _FILES[split][1], 0x801, 1).astype(np.int64)
    if len(images) != len(labels):
        raise DataFormatError(f"{split}: {len(images)} images but {len(labels)} labels")
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


class ImageFolder:
    """A labelled image set laid out as ``root/<class name>/<image file>`` (users' own data)."""

    def __init__(self, root: Path | str, grayscale: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataNotFoundError(f"image folder {self.root} does not exist")
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not self.classes:
            raise DataFormatError(f"{self.root} has no class sub-folders (expected root/<class>/<image>)")
        self.samples = [(f, i) for i, c in enumerate(self.classes) for f in sorted((self.root / c).iterdir())
                        if f.suffix.lower() in IMAGE_SUFFIXES]
        if not self.samples:
            raise DataFormatError(f"{self.root}: no images with suffix {IMAGE_SUFFIXES}")
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path, label = self.samples[index]
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE if self.grayscale else cv2.IMREAD_COLOR)
        if img is None:
            raise DataFormatError(f"{path} cannot be decoded as an image")
        return (img if self.grayscale else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)), label

    def arrays(self, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
        """All images resized to size x size grey, as one array (for the world stream)."""
        imgs = [cv2.resize(self[i][0] if self.grayscale else cv2.cvtColor(self[i][0], cv2.COLOR_RGB2GRAY),
                           (size, size), interpolation=cv2.INTER_AREA) for i in range(len(self))]
        return np.stack(imgs), np.array([lbl for _, lbl in self.samples], dtype=np.int64)


class VideoSource:
    """Frames (RGB uint8) from a video file or a webcam index, through OpenCV."""

    def __init__(self, source: str | int) -> None:
        self.source = int(source) if isinstance(source, str) and source.isdigit() else source
        self.capture = cv2.VideoCapture(self.source)
        if not self.capture.isOpened():
            raise DataNotFoundError(f"cannot open video source {source!r} (missing file, codec or camera)")

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            ok, frame = self.capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()
