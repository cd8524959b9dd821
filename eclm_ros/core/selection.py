"""CEMA's sample selection at the edge: upload only the frames worth learning from, within a budget.

Forward-only: it needs the model's class probabilities and nothing else (numpy; the edge may have no torch).
A frame is excluded when it is
- unreliable: entropy E >= E_max (CEMA's dynamic threshold: E_max = 0.4 ln C, scaled by the running mean
  entropy over the warm-up mean, so a harder environment does not silence the uploads), or
- low-informative: E <= E_min (the model is already sure), or redundant: |cos(p, p_bar)| >= eps against an EMA
  of recent predictions (the cloud has seen frames like it).
On top, an upload budget (a share of frames, or frames per second through a token bucket) is met by raising
E_min when too much passes and lowering it when too little does: the threshold adapts, the rule stays CEMA's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


def entropy(probs: np.ndarray) -> np.ndarray:
    """Per-row entropy of probability vectors [N,C], in nats."""
    p = np.clip(probs, 1e-12, 1.0)
    return -(p * np.log(p)).sum(axis=1)


def entropy_one(probs: np.ndarray | list[float]) -> float:
    """Entropy of one probability vector, in nats: ``entropy`` for a single frame in plain floats, because
    numpy's per-call overhead on ten numbers costs more than the arithmetic."""
    total = 0.0
    for p in (probs.tolist() if isinstance(probs, np.ndarray) else probs):
        p = min(max(p, 1e-12), 1.0)
        total -= p * math.log(p)
    return total


@dataclass
class Selector:
    """Stateful per-edge selector; ``select`` is O(1) per frame and vectorised over a batch."""

    num_classes: int
    e_max_factor: float = 0.4
    e_min_factor: float = 0.02
    redundancy_eps: float = 0.98
    ema: float = 0.9
    dynamic: bool = True
    warmup_frames: int = 256
    target_ratio: float = 0.2  # share of frames the link affords (0 = no ratio budget)
    controller_gain: float = 0.05

    def __post_init__(self) -> None:
        self.mean_probs: np.ndarray | None = None
        self.warmup_entropy = 0.0
        self.running_entropy = 0.0
        self.seen = 0
        self.uploaded = 0
        self.tokens = 0.0
        self.e_min = self.e_min_factor * math.log(self.num_classes)
        self.e_max_boost = 0.0  # raised by the budget controller when too few frames pass (see _control)

    @property
    def e_max(self) -> float:
        base = self.e_max_factor * math.log(self.num_classes)
        if self.dynamic and self.seen >= self.warmup_frames and self.warmup_entropy > 0:
            base *= min(max(self.running_entropy / self.warmup_entropy, 0.6), 1.6)
        return min(base + self.e_max_boost, math.log(self.num_classes))

    def _control(self, passed: float) -> None:
        """Meet the budget by moving the thresholds. Too many frames qualify: first take back any E_max boost,
        then raise E_min (drop the least informative). Too few: first lower E_min, then raise E_max above
        CEMA's threshold. Under a severe shift every frame can look unreliable to the edge; the cloud, which
        weights frames by its own confidence, must still hear from it."""
        step = self.controller_gain * (passed - self.target_ratio) * math.log(self.num_classes)
        if step > 0:
            spent = min(step, self.e_max_boost)
            self.e_max_boost -= spent
            self.e_min = min(self.e_min + step - spent, self.e_max * 0.9)
        else:
            spent = min(-step, self.e_min)
            self.e_min -= spent
            self.e_max_boost = min(self.e_max_boost - step - spent, math.log(self.num_classes))

    def select(self, probs: np.ndarray, max_frames: float | None = None) -> np.ndarray:
        """Boolean mask of the batch's frames to upload. ``max_frames`` caps this batch (bytes/s budgets)."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"expected probabilities [N,{self.num_classes}], got {probs.shape}")
        ent = entropy(probs)
        n = len(ent)
        if n == 0:
            return np.zeros(0, bool)
        batch_mean = float(ent.mean())
        if self.seen < self.warmup_frames:
            self.warmup_entropy = (self.warmup_entropy * self.seen + batch_mean * n) / (self.seen + n)
            self.running_entropy = self.warmup_entropy
        else:
            self.running_entropy = self.ema * self.running_entropy + (1 - self.ema) * batch_mean
        mask = (ent < self.e_max) & (ent > self.e_min)
        if self.mean_probs is not None:
            cos = probs @ self.mean_probs / (np.linalg.norm(probs, axis=1) * np.linalg.norm(self.mean_probs) + 1e-12)
            mask &= np.abs(cos) < self.redundancy_eps
        if self.target_ratio > 0:
            self._control(float(mask.sum() / n))  # thresholds follow what qualifies; the bucket caps what leaves
            # token bucket: a frame may leave when a token is there; tokens accrue at the target ratio
            self.tokens = min(self.tokens + self.target_ratio * n, max(4.0, self.target_ratio * n * 2))
            allowed = int(self.tokens)
            if mask.sum() > allowed:
                order = np.argsort(-ent[mask], kind="stable")  # keep the most informative passing frames
                keep = np.flatnonzero(mask)[order[:allowed]]
                mask = np.zeros(n, bool)
                mask[keep] = True
            self.tokens -= mask.sum()
        if max_frames is not None and mask.sum() > max_frames:
            keep = np.flatnonzero(mask)[np.argsort(-ent[mask], kind="stable")[:int(max_frames)]]
            mask = np.zeros(n, bool)
            mask[keep] = True
        if mask.any():
            batch_p = probs[mask].mean(0)
            self.mean_probs = batch_p if self.mean_probs is None else self.ema * self.mean_probs + (1 - self.ema) * batch_p
        self.seen += n
        self.uploaded += int(mask.sum())
        return mask

    def select_one(self, probs: np.ndarray, ent: float | None = None) -> bool:
        """``select`` for one frame [C] in O(1) plain-float work (the edge's per-frame path): same rule, same
        state, same decisions as ``select(probs[None])[0]``. ``ent`` reuses the frame's entropy if known."""
        p = probs.tolist()
        if len(p) != self.num_classes:
            raise ValueError(f"expected {self.num_classes} probabilities, got {len(p)}")
        if ent is None:
            ent = entropy_one(p)
        if self.seen < self.warmup_frames:
            self.warmup_entropy = (self.warmup_entropy * self.seen + ent) / (self.seen + 1)
            self.running_entropy = self.warmup_entropy
        else:
            self.running_entropy = self.ema * self.running_entropy + (1 - self.ema) * ent
        keep = self.e_min < ent < self.e_max
        if keep and self.mean_probs is not None:
            mean = self.mean_probs.tolist()
            dot = sum(a * b for a, b in zip(p, mean))
            norms = math.sqrt(sum(a * a for a in p)) * math.sqrt(sum(b * b for b in mean))
            keep = abs(dot / (norms + 1e-12)) < self.redundancy_eps
        if self.target_ratio > 0:
            self._control(float(keep))
            self.tokens = min(self.tokens + self.target_ratio, max(4.0, self.target_ratio * 2))
            keep = keep and self.tokens >= 1.0
            self.tokens -= keep
        if keep:
            frame = np.asarray(p)
            self.mean_probs = frame if self.mean_probs is None else self.ema * self.mean_probs + (1 - self.ema) * frame
            self.uploaded += 1
        self.seen += 1
        return keep

    @property
    def upload_ratio(self) -> float:
        return self.uploaded / max(self.seen, 1)


def encode_frames(images, encoding: str = "png", quality: int = 90) -> list[bytes]:
    """Compress model views for upload (uint8 HxW grey or HxWx3 RGB): PNG (lossless, small for small views) or
    JPEG at ``quality``."""
    if encoding not in ("png", "jpeg"):
        raise ValueError(f"encoding must be png or jpeg, got {encoding!r}")
    ext, params = (".png", [cv2.IMWRITE_PNG_COMPRESSION, 6]) if encoding == "png" else (
        ".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    out = []
    for img in images:
        ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img, params)
        if not ok:
            raise ValueError(f"cannot encode a frame of shape {img.shape} as {encoding}")
        out.append(buf.tobytes())
    return out


#: Uploads are model views (28x28 for the default model, 224x224 for a large one): a header claiming more is
#: forged or foreign, and PNG/JPEG compress a huge blank image into a few hundred kilobytes (12000x12000 pixels
#: took 0.4 MB on the wire and 280 MB and a second to decode here).
MAX_UPLOAD_PIXELS = 1 << 20
_PNG, _JPEG = b"\x89PNG\r\n\x1a\n", b"\xff\xd8"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(blob: bytes) -> tuple[int, int]:
    """(width, height) from a PNG or JPEG header, read before anything is decoded; ValueError for any other
    bytes (OpenCV would try every format it knows on them) and for a PNG chunk that claims more bytes than
    follow it (OpenCV's PNG reader allocates what a chunk claims: 1.1 GB for 72 forged bytes here)."""
    if blob[:8] == _PNG and blob[12:16] == b"IHDR" and len(blob) >= 24:
        i = 8
        while i + 8 <= len(blob) and blob[i + 4:i + 8] != b"IEND":
            length = int.from_bytes(blob[i:i + 4], "big")
            if i + 12 + length > len(blob):
                raise ValueError(f"PNG chunk at byte {i} claims {length} bytes, {len(blob) - i - 12} follow")
            i += 12 + length
        return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")
    if blob[:2] != _JPEG:
        raise ValueError("not a PNG or JPEG image")
    i = 2
    while i + 4 <= len(blob):  # marker segments up to the frame header (SOFn) that holds the size
        if blob[i] != 0xFF:
            raise ValueError(f"JPEG segment at byte {i} does not start with a marker")
        marker = blob[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        length = int.from_bytes(blob[i + 2:i + 4], "big")
        if marker in _JPEG_SOF and length >= 7 and i + 9 <= len(blob):
            return int.from_bytes(blob[i + 7:i + 9], "big"), int.from_bytes(blob[i + 5:i + 7], "big")
        i += 2 + length
    raise ValueError("JPEG without a frame header")


def decode_image(blob: bytes, flag: int, max_pixels: int) -> np.ndarray:
    """One PNG or JPEG (cv2.imdecode ``flag``), refused with ValueError unless its header names a size of 1 to
    ``max_pixels`` pixels and the bytes decode: a forged header must not make the decoder allocate gigabytes."""
    width, height = image_size(blob)
    if not 0 < width * height <= max_pixels:
        raise ValueError(f"image of {width}x{height} pixels refused (at most {max_pixels} pixels)")
    img = cv2.imdecode(np.frombuffer(blob, np.uint8), flag)
    if img is None or img.size == 0:
        raise ValueError(f"{len(blob)} bytes do not decode as the {width}x{height} PNG/JPEG they claim to be")
    return img


def decode_frames(blobs: list[bytes], channels: int = 1) -> list[np.ndarray]:
    """Decode uploaded frames into uint8 views (HxW grey, or HxWx3 RGB for ``channels`` 3); refuses anything
    that is not a PNG/JPEG image of at most ``MAX_UPLOAD_PIXELS``."""
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    imgs = []
    for i, blob in enumerate(blobs):
        try:
            img = decode_image(bytes(blob), flag, MAX_UPLOAD_PIXELS)
        except ValueError as exc:
            raise ValueError(f"frame {i}: {exc}") from exc
        imgs.append(img if channels == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return imgs
