"""Camera-sized frames for speed and transport measurements: Fashion-MNIST test images scaled up."""
from __future__ import annotations

import cv2
import numpy as np

from .data import load_fashion_mnist


def camera_frames(count: int = 8, width: int = 640, height: int = 480) -> list[np.ndarray]:
    """``count`` rgb8 frames of ``width`` x ``height`` (HxWx3 uint8)."""
    images, _ = load_fashion_mnist("test")
    return [cv2.cvtColor(cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2RGB)
            for img in images[:count]]
