"""Model files: a trained model with everything the product needs at start-up, and where the defaults live.

A checkpoint holds the model's description (input, normalisation, labels, architecture), its weights with
calibrated BatchNorm statistics, optionally a small set of clean calibration views (the cloud re-estimates a new
sub-model's statistics from them, so no node ever reads a training data set; stored zlib-compressed), and the
manifest of how it was made. Weights are stored as float32, or smaller for shipping (``WEIGHTS``); they always
load as float32. Loading never trains: a missing or unreadable file raises ``ModelFileError`` naming the file and
the fix.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .description import DescriptionError, ModelDescription
from .models import SpecError, architecture, model_from_architecture

FORMAT = "eclm_ros/checkpoint/1"
WEIGHTS = ("float32", "float16", "int8")  # int8: convolution and linear weights per output channel, the rest float16


class ModelFileError(FileNotFoundError):
    """A model file that is missing, unreadable or not what it claims to be; the message names the fix."""


@dataclass
class Checkpoint:
    model: nn.Module
    description: ModelDescription
    calibration: np.ndarray | None = None  # clean uint8 views [N,H,W(,3)]
    manifest: dict[str, Any] = field(default_factory=dict)


SHIPPED_DIR = Path(__file__).resolve().parent.parent / "weights"  # trained defaults, installed with the package
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where models a user trains live: ``cache_dir``, else $ECLM_ROS_CACHE, else ~/.cache/eclm_ros."""
    return Path(cache_dir or os.environ.get("ECLM_ROS_CACHE", Path.home() / ".cache" / "eclm_ros"))


def cache_path(name: str, quick: bool = False, cache_dir: Path | str | None = None) -> Path:
    """Where ``eclm-ros train`` keeps a default model (``cloud``, ``edge``, ``edge_small``) it trained."""
    return cache_root(cache_dir) / ("quick" if quick else "full") / f"{name}.pt"


def default_path(name: str, quick: bool = False, cache_dir: Path | str | None = None) -> Path:
    """The default model a node or command uses: the trained one shipped with the package, so a fresh machine
    serves at once; the cache's when a cache is named (``cache_dir`` or $ECLM_ROS_CACHE) or for quick models."""
    shipped = SHIPPED_DIR / f"{name}.pt"
    if not quick and cache_dir is None and "ECLM_ROS_CACHE" not in os.environ and shipped.is_file():
        return shipped
    return cache_path(name, quick, cache_dir)


def is_shipped(path: Path | str) -> bool:
    return Path(path).resolve().parent == SHIPPED_DIR


def shipped_manifest() -> dict[str, dict[str, Any]]:
    """How each shipped model was made (recipe, data, command, clean accuracy) and its file's sha256."""
    try:
        return json.loads(SHIPPED_MANIFEST.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{SHIPPED_MANIFEST} is missing or unreadable ({exc}); reinstall eclm_ros") from exc


def file_digest(path: Path | str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verify_shipped(path: Path | str) -> None:
    """A shipped model file must be the one its manifest names: a damaged install fails loudly, not subtly."""
    path = Path(path)
    entry = shipped_manifest().get(path.stem)
    if entry is None:
        raise ModelFileError(f"{path} is not listed in {SHIPPED_MANIFEST}; reinstall eclm_ros")
    digest = file_digest(path)
    if digest != entry["sha256"]:
        raise ModelFileError(f"{path} does not match its manifest (sha256 {digest[:12]}, expected "
                             f"{entry['sha256'][:12]}): reinstall eclm_ros, or train your own with 'eclm-ros train "
                             f"--cache DIR' and use --cache DIR")


def _compact(state: dict[str, torch.Tensor], weights: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The state as stored, and the int8 tensors' scales. Symmetric int8 per output channel, a quarter of
    float32's bytes, moved the shipped defaults' clean accuracy by 0.001 at most (a channel's weights share a
    range; BatchNorm's parameters do not, so they stay float16)."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    stored, scales = {}, {}
    for name, value in state.items():
        if not value.is_floating_point() or weights == "float32":
            stored[name] = value
        elif weights == "int8" and value.ndim >= 2:
            scale = value.abs().amax(dim=tuple(range(1, value.ndim)), keepdim=True).float().clamp_min(1e-12) / 127
            stored[name] = torch.round(value / scale).clamp(-127, 127).to(torch.int8)
            scales[name] = scale
        else:
            stored[name] = value.half()
    return stored, scales


def _expand(stored: dict[str, torch.Tensor], scales: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = dict(stored)
    for name, scale in scales.items():
        state[name] = stored[name].float() * scale
    return state


def as_stored(model: nn.Module, weights: str) -> nn.Module:
    """A copy of ``model`` with the values a checkpoint saved with ``weights`` loads (to measure what ships)."""
    stored = copy.deepcopy(model)
    stored.load_state_dict(_expand(*_compact(model.state_dict(), weights)))
    return stored


def save(path: Path | str, model: nn.Module, description: ModelDescription, calibration: np.ndarray | None = None,
         manifest: dict[str, Any] | None = None, weights: str = "float32") -> None:
    """Write a checkpoint atomically (write, then rename: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    description = description.with_architecture(architecture(model))
    state, scales = _compact(model.state_dict(), weights)
    views = None if calibration is None else np.ascontiguousarray(calibration, dtype=np.uint8)
    blob = {"format": FORMAT, "description": description.to_dict(), "state_dict": state, "scales": scales,
            "calibration": None if views is None else torch.frombuffer(bytearray(zlib.compress(views.tobytes(), 9)),
                                                                       dtype=torch.uint8),
            "calibration_shape": None if views is None else list(views.shape),
            "manifest": dict(manifest or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _views(blob: dict) -> np.ndarray | None:
    """The calibration views: zlib-compressed with their shape, or (older files) a plain uint8 tensor."""
    calibration, shape = blob.get("calibration"), blob.get("calibration_shape")
    if calibration is None or shape is None:
        return None if calibration is None else calibration.numpy()
    return np.frombuffer(zlib.decompress(calibration.numpy().tobytes()), dtype=np.uint8).reshape(shape)


def load(path: Path | str, fix: str = "") -> Checkpoint:
    """A checkpoint, its model in eval mode. ``fix`` is appended to the error of a missing file (how to get it)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}{': ' + fix if fix else ''}")
    if is_shipped(path):
        verify_shipped(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of another kind, not a torch file at all
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ModelFileError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {first}); retrain it or "
                             f"point to another file") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an eclm_ros checkpoint (format {FORMAT}); retrain it with "
                             f"'eclm-ros train --force'")
    try:
        description = ModelDescription.from_dict(blob["description"])
        if description.architecture is None:
            raise ModelFileError(f"{path} names no architecture to rebuild")
        model = model_from_architecture(description.architecture)
        model.load_state_dict(_expand(blob["state_dict"], blob.get("scales") or {}))
        calibration = _views(blob)
    except (DescriptionError, SpecError, RuntimeError, KeyError, ValueError, TypeError, AttributeError,
            zlib.error) as exc:
        raise ModelFileError(f"{path}: the weights or calibration views do not fit the model it describes "
                             f"({exc})") from exc
    return Checkpoint(model.eval(), description, calibration, dict(blob.get("manifest") or {}))
