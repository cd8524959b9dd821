"""Deterministic payloads both wire-test nodes and the test derive from one seed."""
import hashlib

import cv2
import numpy as np


def update_tensors(seed: int, megabytes: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(megabytes * 1024 * 1024 / 4)
    return {"stages.0.weight": rng.standard_normal(n - 64).astype(np.float32),
            "bn.weight": rng.standard_normal(32).astype(np.float32),
            "bn.bias": rng.standard_normal(32).astype(np.float32),
            "bn.num_batches_tracked": np.array(seed, dtype=np.int64)}


def frames(seed: int, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    return [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(count)]


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
