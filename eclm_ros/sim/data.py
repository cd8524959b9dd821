"""Data sources: Fashion-MNIST from Debian's package, a user's image folder, a video file or webcam.

A ``Dataset`` is what ``eclm-ros train`` learns from and ``eclm-ros bench`` streams (its test split only):
Fashion-MNIST by default, or a user's folder ``DIR/train/<class>/*``, ``DIR/test/<class>/*`` of any size,
class count, grey or colour. Everything loads from local files: robots and CI machines have no route to a
data hub.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

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

    def arrays(self, input_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every image as one uint8 array: [N,H,W] when all are grey, else [N,H,W,3] RGB; at ``input_size``
        (height, width), or at the images' own size, which must then be the same for all of them."""
        images = [self[i][0] for i in range(len(self))]
        grey = all(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
                   for img in images)
        images = [img[..., 0] if grey else img for img in images]
        if input_size is not None:
            h, w = input_size
            images = [img if img.shape[:2] == (h, w) else cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                      for img in images]
        sizes = {img.shape[:2] for img in images}
        if len(sizes) > 1:
            first, other = sorted(sizes)[:2]
            raise DataFormatError(
                f"{self.root}: images of different sizes (e.g. {first[0]}x{first[1]} and {other[0]}x{other[1]}, "
                f"height x width): give one size to resize them all to (eclm-ros: --input-size H,W)")
        return np.stack(images), np.array([lbl for _, lbl in self.samples], dtype=np.int64)

    def digest(self) -> str:
        """A hash of the folder's contents (names, classes, bytes): models trained on it are cached under it."""
        h = hashlib.sha256()
        for path, label in self.samples:
            h.update(f"{path.relative_to(self.root)}\0{label}\0".encode())
            h.update(path.read_bytes())
        return h.hexdigest()


@dataclass(frozen=True)
class Dataset:
    """A labelled image set in a train and a test split, and the model input it implies (size, channels, its
    train split's normalisation, its classes). ``key`` names the cache folder of models trained on it; ""
    for Fashion-MNIST, the defaults' own data."""

    description: ModelDescription
    source: str  # how it was made, for manifests
    key: str
    _load: Callable[[str], tuple[np.ndarray, np.ndarray]]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images [N,H,W] or [N,H,W,3] and int64 labels of ``train`` or ``test``."""
        if name not in _FILES:
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self._load(name)


def fashion_mnist() -> Dataset:
    """The default data: Fashion-MNIST's 60k train and 10k test images."""
    return Dataset(fashion_mnist_description(), "Fashion-MNIST train split (Debian dataset-fashion-mnist)", "",
                   load_fashion_mnist)


def parse_size(text: str) -> tuple[int, int]:
    """"H,W" (or one number for a square) -> (height, width); ValueError naming the form otherwise."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 8:
        raise ValueError(f"an input size is H,W (e.g. 32,32), each at least 8 pixels; got {text!r}")
    return values


def image_folder(root: Path | str, input_size: tuple[int, int] | None = None) -> Dataset:
    """A user's data set ``root/train/<class>/*`` and ``root/test/<class>/*``: the same classes in both, images
    of one size (or resized to ``input_size``); grey when every image is, else RGB. Read once, here, so a bad
    file is reported before any training starts."""
    root = Path(root)
    folders = {}
    for split in _FILES:
        if not (root / split).is_dir():
            raise DataNotFoundError(f"{root / split} does not exist: a data folder holds train/<class>/<image> and "
                                    f"test/<class>/<image>")
        folders[split] = ImageFolder(root / split, grayscale=False)
    classes = folders["train"].classes
    if folders["test"].classes != classes:
        raise DataFormatError(f"{root}: train has classes {classes} but test has {folders['test'].classes}; both "
                              f"need the same class folders")
    if len(classes) < 2:
        raise DataFormatError(f"{root / 'train'}: one class folder ({classes[0]}); a classifier needs at least two")
    train = folders["train"].arrays(input_size)
    test = folders["test"].arrays(input_size or train[0].shape[1:3])
    if (train[0].ndim == 4) != (test[0].ndim == 4):
        train, test = (_rgb(train), _rgb(test))
    mean, std = _channel_stats(train[0])
    description = ModelDescription(tuple(int(v) for v in train[0].shape[1:3]), 1 if train[0].ndim == 3 else 3,
                                   tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std),
                                   tuple(classes))
    digest = hashlib.sha256("".join(f.digest() for f in folders.values()).encode()).hexdigest()[:12]
    size = "x".join(str(v) for v in description.input_size)
    source = (f"image folder {root.resolve()} ({len(train[1])} train / {len(test[1])} test images, {len(classes)} "
              f"classes, {size} {'grey' if description.channels == 1 else 'RGB'}, contents sha256 {digest})")
    splits = {"train": train, "test": test}
    return Dataset(description, source, f"{root.resolve().name}-{size}-{digest}", splits.__getitem__)


def _channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std on the 0..1 scale, in chunks (a float copy of a large set would not fit)."""
    channels = 3 if images.ndim == 4 else 1
    total, squares = np.zeros(channels), np.zeros(channels)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].reshape(-1, channels).astype(np.float64) / 255.0
        total += x.sum(axis=0)
        squares += (x * x).sum(axis=0)
    n = images.size // channels
    mean = total / n
    return mean, np.sqrt(np.maximum(squares / n - mean * mean, 0.0)).clip(min=1e-3)


def _rgb(split: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = split
    return (np.repeat(images[..., None], 3, axis=3) if images.ndim == 3 else images), labels


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
