"""Model files: a trained model with everything the product needs at start-up, and where the defaults live.

A checkpoint holds the model's description (input, normalisation, labels, architecture), its weights with
calibrated BatchNorm statistics, optionally a small set of clean calibration views (the cloud re-estimates a new
sub-model's statistics from them, so no node ever reads a training data set), and the manifest of how it was
made. Loading never trains: a missing or unreadable file raises ``ModelFileError`` naming the file and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .description import DescriptionError, ModelDescription
from .models import SpecError, architecture, model_from_architecture

FORMAT = "eclm_ros/checkpoint/1"


class ModelFileError(FileNotFoundError):
    """A model file that is missing, unreadable or not what it claims to be; the message names the fix."""


@dataclass
class Checkpoint:
    model: nn.Module
    description: ModelDescription
    calibration: np.ndarray | None = None  # clean uint8 views [N,H,W(,3)]
    manifest: dict[str, Any] = field(default_factory=dict)


def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Where trained models live: ``cache_dir``, else $ECLM_ROS_CACHE, else ~/.cache/eclm_ros."""
    return Path(cache_dir or os.environ.get("ECLM_ROS_CACHE", Path.home() / ".cache" / "eclm_ros"))


def default_path(name: str, quick: bool = False, cache_dir: Path | str | None = None) -> Path:
    """The file of a default model (``cloud``, ``edge``, ``edge_small``) in the cache."""
    return cache_root(cache_dir) / ("quick" if quick else "full") / f"{name}.pt"


def save(path: Path | str, model: nn.Module, description: ModelDescription, calibration: np.ndarray | None = None,
         manifest: dict[str, Any] | None = None) -> None:
    """Write a checkpoint atomically (write, then rename: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    description = description.with_architecture(architecture(model))
    blob = {"format": FORMAT, "description": description.to_dict(), "state_dict": model.state_dict(),
            "calibration": None if calibration is None else torch.from_numpy(np.ascontiguousarray(calibration)),
            "manifest": dict(manifest or {})}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load(path: Path | str, fix: str = "") -> Checkpoint:
    """A checkpoint, its model in eval mode. ``fix`` is appended to the error of a missing file (how to get it)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}{': ' + fix if fix else ''}")
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
        model.load_state_dict(blob["state_dict"])
    except (DescriptionError, SpecError, RuntimeError, KeyError) as exc:
        raise ModelFileError(f"{path}: the weights do not fit the model it describes ({exc})") from exc
    calibration = blob.get("calibration")
    return Checkpoint(model.eval(), description, None if calibration is None else calibration.numpy(),
                      dict(blob.get("manifest") or {}))
