"""Camera frame -> model input, from the model's description: one definition shared by training, the benchmark
and the edge, so the model sees the same pixels everywhere.

A frame of any size and encoding first becomes the model's *view*: uint8 at the model's input size, grey
(HxW) or RGB (HxWx3) as the model takes it. The view is what an edge uploads (the cloud needs no more
pixels than the model sees). The view then becomes float32 [C,H,W], normalised with the description's
per-channel mean and std.
"""
from __future__ import annotations

import cv2
import numpy as np

from .description import ModelDescription


class ImageFormatError(ValueError):
    """A frame that cannot become model input (dtype, shape, emptiness)."""


class Preprocessor:
    """The model's view of a frame and its normalised input, for one model description."""

    def __init__(self, description: ModelDescription) -> None:
        self.description = description
        self.height, self.width = description.input_size
        self.channels = description.channels
        std = np.asarray(description.std, np.float64)
        # x = (v / 255 - mean) / std  ==  v * scale - offset, per channel (computed in float64, used in float32)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.offset = (np.asarray(description.mean, np.float64) / std).astype(np.float32)

    @property
    def view_shape(self) -> tuple[int, ...]:
        return (self.height, self.width) if self.channels == 1 else (self.height, self.width, 3)

    def view(self, img: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
        """Any-size uint8 frame (HxW, HxWx1, HxWx3 in ``channel_order`` rgb or bgr) -> the model's uint8 view."""
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
            raise ImageFormatError(f"expected a uint8 numpy image, got {getattr(img, 'dtype', type(img))}")
        if img.size == 0:
            raise ImageFormatError("empty image")
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim == 3 and img.shape[2] == 3:
            if self.channels == 1:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY if channel_order == "rgb" else cv2.COLOR_BGR2GRAY)
            elif channel_order == "bgr":
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        elif img.ndim == 2:
            if self.channels == 3:
                img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
        else:
            raise ImageFormatError(f"expected HxW or HxWx3, got shape {img.shape}")
        if img.shape[:2] != (self.height, self.width):
            img = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_AREA)
        return img

    def to_input(self, view: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """A view -> float32 [C,H,W], normalised. ``out`` reuses a buffer on the hot path."""
        if out is None:
            out = np.empty((self.channels, self.height, self.width), np.float32)
        planes = view[None] if view.ndim == 2 else view.transpose(2, 0, 1)
        np.multiply(planes, self.scale[:, None, None], out=out, casting="unsafe")
        out -= self.offset[:, None, None]
        return out

    def frame_input(self, img: np.ndarray, channel_order: str = "rgb",
                    out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(view, input) of one camera frame."""
        view = self.view(img, channel_order)
        return view, self.to_input(view, out)

    def batch(self, views: np.ndarray) -> np.ndarray:
        """uint8 views [N,H,W] or [N,H,W,3] -> float32 [N,C,H,W] in one vectorised pass."""
        if views.dtype != np.uint8 or views.shape[1:] != self.view_shape:
            raise ImageFormatError(f"expected uint8 [N,{','.join(map(str, self.view_shape))}], got "
                                   f"{views.dtype} {views.shape}")
        planes = views[:, None] if views.ndim == 3 else views.transpose(0, 3, 1, 2)
        out = planes.astype(np.float32)
        out *= self.scale[None, :, None, None]
        out -= self.offset[None, :, None, None]
        return np.ascontiguousarray(out)

    def tensor(self, views: np.ndarray):
        """``batch`` as a torch tensor (imports torch lazily: a forward-only edge may not have it)."""
        import torch

        return torch.from_numpy(self.batch(views))
