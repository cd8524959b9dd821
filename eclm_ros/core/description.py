"""What a model is, as data: the input it takes, how that input is normalised, its class labels and, for the
models eclm_ros can rebuild itself, its architecture.

One description travels with every checkpoint and, as its architecture, in every update that names a
structure (``ModelUpdate.submodel_spec``), so nothing in the product hard-codes an image size, a channel count
or a label set: the default Fashion-MNIST model is only the default description.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any


class DescriptionError(ValueError):
    """A model description that is incomplete or inconsistent."""


@dataclass(frozen=True)
class ModelDescription:
    """``input_size`` is (height, width); ``channels`` 1 (grey) or 3 (RGB, channel order R, G, B); ``mean`` and
    ``std`` are per channel on the 0..1 pixel scale; ``architecture`` is ``{"name": ..., "config": {...}}`` for
    models of the registry (``models.create_model``) and None for a user's opaque graph."""

    input_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    architecture: dict[str, Any] | None = field(default=None, compare=True)

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 1 or w < 1:
            raise DescriptionError(f"input size must be positive, got {self.input_size}")
        if self.channels not in (1, 3):
            raise DescriptionError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DescriptionError(f"mean {self.mean} and std {self.std} need one value per channel "
                                   f"({self.channels})")
        if any(s <= 0 for s in self.std):
            raise DescriptionError(f"std must be positive, got {self.std}")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise DescriptionError(f"a classifier needs at least two distinct labels, got {len(self.labels)}")
        if self.architecture is not None and set(self.architecture) != {"name", "config"}:
            raise DescriptionError(f"architecture must be {{'name', 'config'}}, got {sorted(self.architecture)}")

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def structure(self) -> str:
        """How the model is named on the wire (``submodel_spec``): its architecture's JSON, or '' for an opaque
        graph. The edge and the cloud both take it from here, so they name one model alike."""
        return architecture_json(self.architecture) if self.architecture else ""

    def input_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        """The model input's shape, NCHW."""
        return (batch, self.channels, *self.input_size)

    def with_architecture(self, architecture: dict[str, Any] | None) -> "ModelDescription":
        return replace(self, architecture=architecture)

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": list(self.input_size), "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std), "labels": list(self.labels), "architecture": self.architecture}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelDescription":
        try:
            return cls(tuple(int(v) for v in d["input_size"]), int(d["channels"]),
                       tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]),
                       tuple(str(v) for v in d["labels"]), d.get("architecture"))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DescriptionError):
                raise
            raise DescriptionError(f"not a model description ({exc})") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ModelDescription":
        try:
            return cls.from_dict(json.loads(text))
        except ValueError as exc:
            if isinstance(exc, DescriptionError):
                raise
            raise DescriptionError(f"not a model description: {text[:80]!r} ({exc})") from exc


def architecture_json(architecture: dict[str, Any]) -> str:
    """The one string form of a structure on the wire (``submodel_spec``): canonical, so equal structures
    compare equal as strings."""
    return json.dumps(architecture, separators=(",", ":"), sort_keys=True)
