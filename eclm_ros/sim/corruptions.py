"""The 15 common corruptions at 5 severities in two worlds: the shifting world's weather, light and sensor faults.

``mild`` follows hendrycks/robustness ``make_cifar_c.py`` (made for 32x32 images), ``harsh`` its
``make_imagenet_c.py``: far stronger noise, contrast, brightness, fog, frost, pixelation and compression, where
per-batch methods and small edges fail and a strong cloud model matters. Spatial parameters (blur radii,
displacements) are given in pixels at the world's reference size (32 px, 224 px) and scaled to the frame, so a
blur still looks like a blur on a 28x28 or a 640x480 frame; intensity parameters are the originals'. Implemented with
numpy + OpenCV: Wand/ImageMagick (motion blur, snow) and the frost photographs of the original are replaced by
an OpenCV line kernel and a procedurally grown frost texture. Deterministic under the ``rng`` passed in.
Where the original parameters are not monotone in severity at this size (elastic, glass blur, snow level 3),
they are adjusted so that a higher severity never corrupts less.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
               "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
               "jpeg_compression")


WORLDS = ("mild", "harsh")


class UnknownCorruptionError(ValueError):
    """A corruption name, severity or world that does not exist."""


def _scale(x: np.ndarray, world: str) -> float:
    """Pixel parameters are given at the world's reference size: CIFAR-C's 32 px (never shrunk below it, so a
    28x28 frame keeps CIFAR-C's blur), ImageNet-C's 224 px (scaled to any frame)."""
    if world == "mild":
        return max(min(x.shape[:2]) / 32.0, 1.0)
    return min(x.shape[:2]) / 224.0


def gaussian_noise(x, c, sc, rng):
    return x + rng.normal(0.0, c, x.shape).astype(np.float32)


def shot_noise(x, c, sc, rng):
    return (rng.poisson(np.clip(x, 0, 1) * c) / c).astype(np.float32)


def impulse_noise(x, amount, sc, rng):
    out = x.copy()
    u = rng.random(x.shape)
    out[u < amount / 2] = 0.0
    out[(u >= amount / 2) & (u < amount)] = 1.0
    return out


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    r = max(radius, 0.5)
    L = np.arange(-int(np.ceil(r)), int(np.ceil(r)) + 1)
    X, Y = np.meshgrid(L, L)
    k = np.pad(((X ** 2 + Y ** 2) <= r ** 2).astype(np.float32), 1)
    k = cv2.GaussianBlur(k, (3, 3), alias_blur, borderType=cv2.BORDER_CONSTANT)
    return k / k.sum()


def defocus_blur(x, c, sc, rng):
    radius, alias = c
    k = _disk(radius * sc, alias)
    return cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REFLECT)


def glass_blur(x, c, sc, rng):
    sigma, max_delta, iterations, share = c
    sigma, delta = sigma * sc + 0.3, max(1, int(round(max_delta * sc)))
    out = cv2.GaussianBlur(x, (0, 0), sigma)
    h, w = x.shape[:2]
    for _ in range(iterations):
        # locally shuffle pixels: a pixel takes a random neighbour within +-delta (vectorised)
        moves = rng.random((h, w)) < share
        dy = rng.integers(-delta, delta + 1, (h, w)) * moves
        dx = rng.integers(-delta, delta + 1, (h, w)) * moves
        yy = np.clip(np.arange(h)[:, None] + dy, 0, h - 1)
        xx = np.clip(np.arange(w)[None, :] + dx, 0, w - 1)
        out = out[yy, xx]
    return cv2.GaussianBlur(out, (0, 0), sigma)


def _motion_kernel(length: int, sigma: float, angle: float) -> np.ndarray:
    size = 2 * length + 1
    k = np.zeros((size, size), np.float32)
    weights = np.exp(-np.arange(length + 1) ** 2 / (2 * sigma ** 2)).astype(np.float32)
    for i, wgt in enumerate(weights):  # one-sided streak, like ImageMagick's motion blur
        k[length, length + i] = wgt
    rot = cv2.getRotationMatrix2D((length, length), angle, 1.0)
    k = cv2.warpAffine(k, rot, (size, size))
    return k / k.sum()


def motion_blur(x, c, sc, rng):
    length, sigma = c
    k = _motion_kernel(max(1, int(round(length * sc))), sigma * sc, float(rng.uniform(-45, 45)))
    return cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REPLICATE)


def _center_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    h, w = x.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), 0, factor)
    return cv2.warpAffine(x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def zoom_blur(x, c, sc, rng):
    top, step = c
    factors = np.arange(1.0, top, step)
    out = x.copy()
    for f in factors[1:]:
        out += _center_zoom(x, float(f))
    return out / len(factors)


def _gray(x: np.ndarray) -> np.ndarray:
    return x if x.ndim == 2 else cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)


def _like(layer: np.ndarray, x: np.ndarray) -> np.ndarray:
    return layer if x.ndim == 2 else np.repeat(layer[:, :, None], x.shape[2], axis=2)


def snow(x, c, sc, rng):
    loc, scale, zoom, thresh, length, sigma, blend = c
    h, w = x.shape[:2]
    flakes = rng.normal(loc, scale, (h, w)).astype(np.float32)
    flakes = _center_zoom(flakes, zoom)
    flakes[flakes < thresh] = 0
    k = _motion_kernel(max(1, int(round(length * sc))), sigma * sc, float(rng.uniform(-135, -45)))
    flakes = cv2.filter2D(flakes, -1, k)
    x = blend * x + (1 - blend) * np.maximum(x, _like(_gray(x), x) * 1.5 + 0.5)
    return x + _like(flakes + np.rot90(flakes, 2), x)


def _frost_texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Ice crystals: sparse seeds grown into random streaks, blurred, with a fine grain (0..1)."""
    tex = np.zeros((h, w), np.float32)
    for _ in range(max(3, (h * w) // 60)):
        y, x0 = rng.integers(0, h), rng.integers(0, w)
        length = rng.integers(2, max(3, min(h, w) // 3))
        angle = rng.uniform(0, np.pi)
        y1 = int(np.clip(y + length * np.sin(angle), 0, h - 1))
        x1 = int(np.clip(x0 + length * np.cos(angle), 0, w - 1))
        cv2.line(tex, (int(x0), int(y)), (x1, y1), float(rng.uniform(0.4, 1.0)), 1)
    tex = cv2.GaussianBlur(tex, (0, 0), 0.6) + 0.35 * rng.random((h, w)).astype(np.float32)
    return np.clip(tex / max(tex.max(), 1e-6), 0, 1)


def frost(x, c, sc, rng):
    a, b = c
    return a * x + b * _like(_frost_texture(x.shape[0], x.shape[1], rng), x)


def _plasma(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square plasma fractal in 0..1 (the fog layer of ImageNet-C)."""
    grid = np.zeros((mapsize, mapsize), np.float64)
    step, wibble = mapsize, 100.0
    while step >= 2:
        half = step // 2
        wibble /= decay
        corners = grid[0:mapsize:step, 0:mapsize:step]
        square = corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1) + np.roll(np.roll(corners, -1, 0), -1, 1)
        grid[half:mapsize:step, half:mapsize:step] = square / 4 + rng.uniform(-wibble, wibble, square.shape)
        ltsum = grid[0:mapsize:step, 0:mapsize:step] + grid[half:mapsize:step, half:mapsize:step]
        drgrid = grid[half:mapsize:step, half:mapsize:step]
        ldrsum = drgrid + np.roll(drgrid, 1, 0)
        lulsum = ltsum + np.roll(ltsum, -1, 1)
        grid[half:mapsize:step, 0:mapsize:step] = (ldrsum + lulsum) / 4 + rng.uniform(-wibble, wibble, ldrsum.shape)
        ttsum = ltsum + np.roll(ltsum, -1, 0)
        tdrsum = drgrid + np.roll(drgrid, 1, 1)
        grid[0:mapsize:step, half:mapsize:step] = (ttsum + tdrsum) / 4 + rng.uniform(-wibble, wibble, ttsum.shape)
        step = half
    grid -= grid.min()
    return (grid / max(grid.max(), 1e-9)).astype(np.float32)


def fog(x, c, sc, rng):
    strength, decay = c
    h, w = x.shape[:2]
    layer = cv2.resize(_plasma(32, decay, rng), (w, h), interpolation=cv2.INTER_LINEAR)
    top = x.max()
    return (x + strength * _like(layer, x)) * top / (top + strength)


def brightness(x, c, sc, rng):
    if x.ndim == 2:
        return x + c
    hsv = cv2.cvtColor(np.clip(x, 0, 1), cv2.COLOR_RGB2HSV)
    hsv[:, :, 2] = np.clip(hsv[:, :, 2] + c, 0, 1)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def contrast(x, c, sc, rng):
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, c, sc, rng):
    alpha, sigma, affine = c  # the largest displacement, its smoothness and the affine jitter, in pixels
    h, w = x.shape[:2]
    src = np.float32([[w / 2, h / 2], [w / 2 + w / 4, h / 2], [w / 2, h / 2 - h / 4]])
    dst = src + rng.uniform(-affine * sc, affine * sc, src.shape).astype(np.float32)
    out = cv2.warpAffine(x, cv2.getAffineTransform(src, dst), (w, h), borderMode=cv2.BORDER_REFLECT_101)
    dx = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma * sc) * alpha * sc
    dy = cv2.GaussianBlur(rng.uniform(-1, 1, (h, w)).astype(np.float32), (0, 0), sigma * sc) * alpha * sc
    dx *= alpha * sc / max(np.abs(dx).max(), 1e-6)
    dy *= alpha * sc / max(np.abs(dy).max(), 1e-6)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(out, gx + dx, gy + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def pixelate(x, c, sc, rng):
    h, w = x.shape[:2]
    small = cv2.resize(x, (max(1, int(w * c)), max(1, int(h * c))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def jpeg_compression(x, quality, sc, rng):
    img = np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if dec.ndim == 3:
        dec = cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)
    return dec.astype(np.float32) / 255.0


#: Each corruption's parameters per severity 1..5, per world. mild: CIFAR-C's, with these changes where they
#: were not monotone in severity at 28-32 px or relied on ImageMagick: glass blur moves a growing share of the
#: pixels, motion blur and snow streaks are a third of the Wand radius long (and snow's sigma a third too),
#: snow level 3 and elastic displacements are re-ordered to grow with severity. harsh: ImageNet-C's, with
#: glass blur's iterations made monotone and a growing share of pixels moved (every delta rounds to 1 px at
#: 28 px), snow level 3's threshold 0.85 and fog level 4's strength 2.75, so that no level corrupts less than
#: the one below. Blurs scaled from 224 px are no stronger than CIFAR-C's on a 28 px frame (defocus level 1
#: hardly changes it): this world's hardness is in its intensities. Elastic keeps mild's form (ImageNet-C's
#: own parameters, scaled to 28 px, displace less than CIFAR-C's) at 1.5x its displacement and jitter, the
#: smoothness scaled 32 -> 224 px.
STRENGTHS: dict[str, dict[str, list]] = {
    "mild": {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1, 0.3), (0.25, 1, 1, 0.45), (0.4, 1, 1, 0.6), (0.25, 1, 2, 0.8), (0.4, 1, 2, 1.0)],
        "motion_blur": [(10 / 3, 1), (10 / 3, 1.5), (10 / 3, 2), (10 / 3, 2.5), (12 / 3, 3)],
        "zoom_blur": [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
        "snow": [(0.1, 0.2, 1, 0.6, 8 / 3, 3 / 3, 0.95), (0.1, 0.2, 1, 0.5, 10 / 3, 4 / 3, 0.9),
                 (0.15, 0.3, 1.75, 0.5, 10 / 3, 4 / 3, 0.9), (0.25, 0.3, 2.25, 0.6, 12 / 3, 6 / 3, 0.85),
                 (0.3, 0.3, 1.25, 0.65, 14 / 3, 12 / 3, 0.8)],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "elastic_transform": [(0.6, 3.0, 0.5), (1.2, 2.5, 0.8), (2.0, 2.0, 1.1), (2.8, 1.6, 1.4), (3.4, 1.3, 1.8)],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    "harsh": {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2, 0.6), (0.9, 2, 2, 0.7), (1, 2, 3, 0.8), (1.1, 3, 3, 0.9), (1.5, 4, 3, 1.0)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "zoom_blur": [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
        "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.85, 12, 8, 0.7),
                 (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.75, 1.5), (3.0, 1.4)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "elastic_transform": [(10.5 * a, 7 * s, 10.5 * f) for a, s, f in
                              [(0.6, 3.0, 0.5), (1.2, 2.5, 0.8), (2.0, 2.0, 1.1), (2.8, 1.6, 1.4), (3.4, 1.3, 1.8)]],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
}

_FUNCTIONS: dict[str, Callable[[np.ndarray, object, float, np.random.Generator], np.ndarray]] = {
    name: globals()[name] for name in CORRUPTIONS}


def corrupt(image: np.ndarray, name: str, severity: int, rng: np.random.Generator,
            world: str = "mild") -> np.ndarray:
    """Apply one corruption of ``world`` to a uint8 HxW or HxWx3 image; returns uint8 of the same shape."""
    if name not in _FUNCTIONS:
        raise UnknownCorruptionError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise UnknownCorruptionError(f"severity must be 1..5, got {severity}")
    if world not in STRENGTHS:
        raise UnknownCorruptionError(f"unknown world {world!r}; known: {', '.join(WORLDS)}")
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected a uint8 HxW or HxWx3 image, got {image.dtype} {image.shape}")
    x = image.astype(np.float32) / 255.0
    out = _FUNCTIONS[name](x, STRENGTHS[world][name][int(severity) - 1], _scale(x, world), rng)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8).reshape(image.shape)


def corrupt_batch(images: np.ndarray, name: str, severity: int, rng: np.random.Generator,
                  world: str = "mild") -> np.ndarray:
    """Corrupt each image of a uint8 [N,H,W(,3)] batch (one rng stream, so batches are reproducible)."""
    return (np.stack([corrupt(img, name, severity, rng, world) for img in images]) if len(images)
            else images.copy())
