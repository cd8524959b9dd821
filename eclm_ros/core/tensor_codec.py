"""Named-tensor bundles: the bytes that carry model parameters between edge and cloud.

A bundle is a list of tensor specs (name, dtype, shape, on-wire encoding, where its bytes lie) plus one payload,
optionally zlib-compressed, with a SHA-256 digest over the payload as sent. The layout mirrors
``msg/TensorBundle.msg`` one to one so a bundle crosses ROS without re-encoding.

Unpacking is strict because a model update comes from the network: every inconsistency (truncation, a size
over the limit, a wrong digest, an unknown dtype, overlapping or out-of-range tensors, NaN/Inf) raises
``CodecError`` with the reason, and nothing is returned unless every tensor decoded.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

ENCODINGS = ("raw", "fp16", "int8")
COMPRESSIONS = ("none", "zlib")
DTYPES = ("float32", "float64", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")
FLOAT_DTYPES = ("float32", "float64", "float16")
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_BLOB_MAGIC = b"ECLMTB1\0"
_MAX_HEADER = 16 * 1024 * 1024
_INT32 = (-2**31, 2**31 - 1)  # msg/TensorSpec.msg's zero_point
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # and its scale
_INT64_MAX, _MAX_DIMS = 2**63 - 1, 32  # what numpy can shape an array into


class CodecError(ValueError):
    """A bundle is malformed, too large, altered or holds values a model must not receive."""


@dataclass(frozen=True)
class TensorSpec:
    """Where one named tensor lies in the (decompressed) payload and how it is encoded."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    encoding: str = "raw"
    scale: float = 0.0
    zero_point: int = 0
    offset: int = 0
    length: int = 0

    @property
    def count(self) -> int:
        """Elements, in Python integers: a forged shape must not wrap around int64 into a small number."""
        return math.prod(self.shape)


@dataclass(frozen=True)
class Bundle:
    """Packed tensors, as they travel (``payload`` is exactly the bytes sent)."""

    specs: tuple[TensorSpec, ...]
    payload: bytes
    compression: str
    raw_size: int
    digest: str
    _header: bytes = field(default=b"", repr=False, compare=False)

    @property
    def wire_size(self) -> int:
        """Bytes on the wire: payload plus the self-describing header."""
        return len(self.payload) + len(self._header_json())

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def _header_json(self) -> bytes:
        if self._header:
            return self._header
        header = {
            "compression": self.compression,
            "raw_size": self.raw_size,
            "digest": self.digest,
            "tensors": [
                [s.name, s.dtype, list(s.shape), s.encoding, s.scale, s.zero_point, s.offset, s.length]
                for s in self.specs
            ],
        }
        data = json.dumps(header, separators=(",", ":")).encode()
        object.__setattr__(self, "_header", data)
        return data

    def signed_parts(self) -> list[bytes]:
        """What an upload signature covers of a bundle: every field that decides how the payload decodes (the
        int8 scale as it reads after the float32 wire encoding, so sender and receiver agree) and the payload."""
        with np.errstate(over="ignore"):  # a forged scale beyond float32 is signed as inf (and refused by unpack)
            specs = [[s.name, s.dtype, list(s.shape), s.encoding, float(np.float32(s.scale)), int(s.zero_point),
                      int(s.offset), int(s.length)] for s in self.specs]
        header = json.dumps([self.compression, int(self.raw_size), self.digest, specs], separators=(",", ":"))
        return [header.encode(), bytes(self.payload)]

    def to_bytes(self) -> bytes:
        """A self-contained blob (for files, replay, byte counting)."""
        header = self._header_json()
        return _BLOB_MAGIC + struct.pack("<I", len(header)) + header + self.payload

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> "Bundle":
        """Parse a blob written by ``to_bytes``; the tensors are checked later by ``unpack``."""
        data = bytes(data)
        if len(data) > max_bytes + _MAX_HEADER:
            raise CodecError(f"bundle blob of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
        if len(data) < len(_BLOB_MAGIC) + 4 or not data.startswith(_BLOB_MAGIC):
            raise CodecError("not a tensor bundle (bad magic or truncated before the header)")
        (hlen,) = struct.unpack_from("<I", data, len(_BLOB_MAGIC))
        start = len(_BLOB_MAGIC) + 4
        if hlen > _MAX_HEADER or start + hlen > len(data):
            raise CodecError(f"bundle header of {hlen} bytes is truncated or too large")
        try:
            header = json.loads(data[start:start + hlen])
            specs = tuple(
                TensorSpec(str(n), str(d), tuple(int(x) for x in shp), str(e), float(sc), int(zp), int(o), int(ln))
                for n, d, shp, e, sc, zp, o, ln in header["tensors"]
            )
            return cls(specs, data[start + hlen:], str(header["compression"]), int(header["raw_size"]),
                       str(header["digest"]))
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # OverflowError: a number no float or index holds; RecursionError: JSON nested beyond the parser
            raise CodecError(f"bundle header is not valid: {type(exc).__name__}: {exc}") from exc


def digest(payload: bytes) -> str:
    """Hex SHA-256 of the payload bytes as sent."""
    return hashlib.sha256(payload).hexdigest()


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.name not in DTYPES:
        raise CodecError(f"dtype {arr.dtype.name} is not supported (supported: {', '.join(DTYPES)})")
    return arr  # tobytes() writes C order whatever the strides


def _encode(arr: np.ndarray, encoding: str) -> tuple[bytes, str, float, int]:
    """Encode one tensor; integer and bool tensors always travel raw."""
    if encoding == "raw" or arr.dtype.name not in FLOAT_DTYPES:
        return arr.tobytes(), "raw", 0.0, 0
    if not np.isfinite(arr).all():
        raise CodecError("cannot quantise a tensor holding NaN or Inf")
    if encoding == "fp16":
        return arr.astype(np.float16).tobytes(), "fp16", 0.0, 0
    lo = float(arr.min()) if arr.size else 0.0
    hi = float(arr.max()) if arr.size else 0.0
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zero_point = int(round(-128 - lo / scale))
    q = np.clip(np.rint(arr / scale) + zero_point, -128, 127).astype(np.int8)
    return q.tobytes(), "int8", scale, zero_point


def pack(tensors: Mapping[str, Any], *, encoding: str = "raw", compress: bool = True) -> Bundle:
    """Pack named tensors (numpy arrays or torch tensors) into a bundle.

    ``encoding`` applies to floating-point tensors: "raw" keeps them exact, "fp16" halves them, "int8"
    quantises each tensor affinely (error at most scale/2), for links that cannot carry more.
    """
    if encoding not in ENCODINGS:
        raise CodecError(f"unknown encoding {encoding!r} (use one of {ENCODINGS})")
    specs: list[TensorSpec] = []
    chunks: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise CodecError(f"tensor names must be non-empty strings, got {name!r}")
        arr = _as_numpy(value)
        data, enc, scale, zp = _encode(arr, encoding)
        specs.append(TensorSpec(name, arr.dtype.name, tuple(int(d) for d in arr.shape), enc, scale, zp,
                                offset, len(data)))
        chunks.append(data)
        offset += len(data)
    raw = b"".join(chunks)
    payload = zlib.compress(raw, 6) if compress else raw
    return Bundle(tuple(specs), payload, "zlib" if compress else "none", len(raw), digest(payload))


def _wire_itemsize(spec: TensorSpec) -> int:
    if spec.encoding == "fp16":
        return 2
    if spec.encoding == "int8":
        return 1
    return np.dtype(spec.dtype).itemsize


def _check_spec(spec: TensorSpec, raw_size: int) -> None:
    if not spec.name:
        raise CodecError("a tensor has an empty name")
    if spec.dtype not in DTYPES:
        raise CodecError(f"tensor {spec.name!r}: unknown dtype {spec.dtype!r}")
    if spec.encoding not in ENCODINGS:
        raise CodecError(f"tensor {spec.name!r}: unknown encoding {spec.encoding!r}")
    if spec.encoding != "raw" and spec.dtype not in FLOAT_DTYPES:
        raise CodecError(f"tensor {spec.name!r}: encoding {spec.encoding} is only for float tensors")
    if spec.encoding == "int8" and not 0 < spec.scale <= _FLOAT32_MAX:  # NaN fails too
        raise CodecError(f"tensor {spec.name!r}: int8 scale {spec.scale} is not a positive finite float32")
    if not _INT32[0] <= spec.zero_point <= _INT32[1]:
        raise CodecError(f"tensor {spec.name!r}: zero point {spec.zero_point} does not fit the wire's int32")
    # numpy shapes an array only if its non-zero dimensions multiply to a byte size that fits int64, even
    # when another dimension is 0
    if len(spec.shape) > _MAX_DIMS or any(d < 0 for d in spec.shape) \
            or math.prod(max(d, 1) for d in spec.shape) > _INT64_MAX // 8:
        raise CodecError(f"tensor {spec.name!r}: shape {spec.shape[:8]} has a negative dimension, more than "
                         f"{_MAX_DIMS} dimensions or more elements than numpy can address")
    if spec.count * _wire_itemsize(spec) != spec.length:
        raise CodecError(f"tensor {spec.name!r}: shape {spec.shape} needs "
                         f"{spec.count * _wire_itemsize(spec)} bytes, spec says {spec.length}")
    if spec.offset < 0 or spec.offset + spec.length > raw_size:
        raise CodecError(f"tensor {spec.name!r}: bytes [{spec.offset}, {spec.offset + spec.length}) lie outside "
                         f"the payload of {raw_size} bytes (truncated?)")


def _decompress(bundle: Bundle, max_bytes: int) -> bytes:
    if bundle.compression not in COMPRESSIONS:
        raise CodecError(f"unknown compression {bundle.compression!r}")
    if bundle.raw_size < 0 or bundle.raw_size > max_bytes:
        raise CodecError(f"bundle of {bundle.raw_size} bytes exceeds the limit of {max_bytes} bytes")
    if bundle.compression == "none":
        raw = bundle.payload
    else:
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(bundle.payload, bundle.raw_size + 1)
        except zlib.error as exc:
            raise CodecError(f"payload does not decompress: {exc}") from exc
        if not inflater.eof:
            raise CodecError("compressed payload is truncated or larger than its declared size")
    if len(raw) != bundle.raw_size:
        raise CodecError(f"payload holds {len(raw)} bytes, the bundle declares {bundle.raw_size}")
    return raw


def _decode(spec: TensorSpec, raw: bytes) -> np.ndarray:
    data = raw[spec.offset:spec.offset + spec.length]
    if spec.encoding == "raw":
        arr = np.frombuffer(data, dtype=spec.dtype).copy()
    elif spec.encoding == "fp16":
        arr = np.frombuffer(data, dtype=np.float16).astype(spec.dtype)
    else:
        q = np.frombuffer(data, dtype=np.int8).astype(np.float32)
        arr = ((q - spec.zero_point) * np.float32(spec.scale)).astype(spec.dtype)
    return arr.reshape(spec.shape)


def unpack(bundle: Bundle, *, max_bytes: int = DEFAULT_MAX_BYTES,
           templates: Mapping[str, tuple[int, ...]] | None = None,
           allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """Decode every tensor of a bundle, or raise ``CodecError`` and return nothing.

    ``templates`` (name -> shape) states exactly which tensors the receiver expects, so a bundle built for
    another model structure is refused before it touches a model.
    """
    if len(bundle.payload) > max_bytes:
        raise CodecError(f"payload of {len(bundle.payload)} bytes exceeds the limit of {max_bytes} bytes")
    if digest(bundle.payload) != bundle.digest:
        raise CodecError("digest mismatch: the payload was altered or truncated in transit")
    raw = _decompress(bundle, max_bytes)
    names = [s.name for s in bundle.specs]
    if len(set(names)) != len(names):
        raise CodecError("duplicate tensor names in bundle")
    for spec in bundle.specs:
        _check_spec(spec, len(raw))
    spans = sorted((s.offset, s.offset + s.length, s.name) for s in bundle.specs if s.length)
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise CodecError(f"tensors {a!r} and {b!r} overlap in the payload")
    if templates is not None:
        missing = sorted(set(templates) - set(names))
        extra = sorted(set(names) - set(templates))
        if missing or extra:
            raise CodecError(f"bundle does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    out: dict[str, np.ndarray] = {}
    for spec in bundle.specs:
        if templates is not None and tuple(templates[spec.name]) != spec.shape:
            raise CodecError(f"tensor {spec.name!r} has shape {spec.shape}, the model expects "
                             f"{tuple(templates[spec.name])}")
        arr = _decode(spec, raw)
        if not allow_nonfinite and spec.dtype in FLOAT_DTYPES and not np.isfinite(arr).all():
            raise CodecError(f"tensor {spec.name!r} holds NaN or Inf")
        out[spec.name] = arr
    return out


def signing_bytes(*, target_edge: str, update_id: str, version: int, base_version: int, kind: int,
                  submodel_spec: str, bundle_digest: str) -> bytes:
    """The canonical bytes a model-update signature covers.

    The payload enters through its digest (which ``unpack`` verifies), so every field that decides what a
    receiver does with the update is bound by the signature.
    """
    fields = [target_edge, update_id, str(int(version)), str(int(base_version)), str(int(kind)), submodel_spec,
              bundle_digest]
    return b"eclm-model-update/1\n" + "\n".join(fields).encode()
