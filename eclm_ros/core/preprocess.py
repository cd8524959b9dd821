"""Camera frame -> model input. One definition shared by training, the benchmark and the edge node, so the
model sees the same pixels everywhere."""
from __future__ import annotations

import cv2
import numpy as np

MEAN = 0.2860  # Fashion-MNIST train-split pixel mean (0..1)
STD = 0.3530
SIZE = 28


class ImageFormatError(ValueError):
    """A frame that cannot become model input (dtype, shape, emptiness)."""


def to_gray(img: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """uint8 HxW or HxWx3 -> uint8 HxW."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise ImageFormatError(f"expected a uint8 numpy image, got {getattr(img, 'dtype', type(img))}")
    if img.size == 0:
        raise ImageFormatError("empty image")
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if channel_order == "rgb" else cv2.COLOR_BGR2GRAY)
    if img.ndim == 3 and img.shape[2] == 1:
        return img[:, :, 0]
    raise ImageFormatError(f"expected HxW or HxWx3, got shape {img.shape}")


def to_model_view(img: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """Any-size uint8 frame -> the uint8 grey SIZE x SIZE image the model sees (and an edge uploads)."""
    gray = to_gray(img, channel_order)
    if gray.shape != (SIZE, SIZE):
        gray = cv2.resize(gray, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return gray


def to_model_input(img: np.ndarray, channel_order: str = "rgb", out: np.ndarray | None = None) -> np.ndarray:
    """Any-size uint8 frame -> float32 [1,28,28], normalised. ``out`` reuses a buffer on the hot path."""
    gray = to_model_view(img, channel_order)
    if out is None:
        out = np.empty((1, SIZE, SIZE), dtype=np.float32)
    np.multiply(gray, np.float32(1.0 / (255.0 * STD)), out=out[0], casting="unsafe")
    out -= np.float32(MEAN / STD)
    return out


def batch_to_array(images: np.ndarray) -> np.ndarray:
    """uint8 [N,28,28] -> float32 [N,1,28,28] in one vectorised pass."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (SIZE, SIZE):
        raise ImageFormatError(f"expected uint8 [N,{SIZE},{SIZE}], got {images.dtype} {images.shape}")
    out = images.astype(np.float32)[:, None]
    out *= np.float32(1.0 / (255.0 * STD))
    out -= np.float32(MEAN / STD)
    return out


def batch_to_tensor(images: np.ndarray):
    """uint8 [N,28,28] -> torch float32 [N,1,28,28] (imports torch lazily: the edge may not have it)."""
    import torch

    return torch.from_numpy(batch_to_array(images))
