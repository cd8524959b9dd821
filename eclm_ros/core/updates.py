"""Model-update admission: which updates an edge may apply, and the signatures that prove their origin.

An edge applies an update only if it is addressed to it, moves its version forward from exactly the version
it serves (a full update may start from any version), fits the size limit, and, when the edge holds the
cloud's public key, carries a valid signature over every field that decides what the edge does with it.
"""
from __future__ import annotations

import copy

import torch

from .compose import assemble
from .messages import KIND_FULL, KIND_MODULES, KIND_NAMES, KIND_NORM_AFFINE, UpdateHeader
from .models import SpecError, model_from_architecture
from .signing import SCHEME, SignatureError, key_id, sign, verify
from .tensor_codec import Bundle, digest, unpack


class UpdateRejected(ValueError):
    """Why an update was not applied; the edge keeps serving its last good model. ``kind`` names the check
    that failed (digest, target, kind, stale, version, size, signature, structure), for counters."""

    def __init__(self, reason: str, kind: str = "invalid") -> None:
        super().__init__(reason)
        self.kind = kind


def signature_for(header: UpdateHeader, bundle: Bundle, private_key) -> tuple[str, str, bytes]:
    """(scheme, key id, signature) for an update."""
    return SCHEME, key_id(private_key.public_key()), sign(private_key, header.signed_bytes(bundle.digest))


def check_update(header: UpdateHeader, bundle: Bundle, *, edge_id: str, current_version: int,
                 public_key=None, max_bytes: int = 64 * 1024 * 1024, min_version: int = 0) -> None:
    """Raise UpdateRejected with the reason unless the edge may apply this update. ``min_version`` is the
    version the cloud last registered the edge at: anything older is a replay, even after the edge restarted
    (its own version then starts again from 0)."""
    if digest(bundle.payload) != bundle.digest:
        raise UpdateRejected("digest mismatch: the payload was altered or truncated in transit", "digest")
    if header.target_edge not in (edge_id, "*"):
        raise UpdateRejected(f"update {header.update_id[:8]} is for {header.target_edge!r}, not {edge_id!r}",
                             "target")
    if header.kind not in KIND_NAMES:
        raise UpdateRejected(f"unknown update kind {header.kind}", "kind")
    if header.version <= current_version:
        raise UpdateRejected(f"stale update: version {header.version} <= serving version {current_version}",
                             "stale")
    if header.version < min_version:
        raise UpdateRejected(f"replayed update: version {header.version} is older than version {min_version}, "
                             f"which the cloud registered this edge at", "stale")
    if header.kind != KIND_FULL and header.base_version != current_version:
        raise UpdateRejected(f"update applies on version {header.base_version}, the edge serves {current_version}",
                             "version")
    if len(bundle.payload) > max_bytes:
        raise UpdateRejected(f"update of {len(bundle.payload)} bytes exceeds the limit of {max_bytes}", "size")
    if public_key is not None:
        if header.signature_scheme != SCHEME:
            raise UpdateRejected(f"unsigned update (scheme {header.signature_scheme!r}) refused: a cloud key is set",
                                 "signature")
        try:
            verify(public_key, header.signed_bytes(bundle.digest), header.signature)
        except SignatureError as exc:
            raise UpdateRejected(f"bad signature: {exc}", "signature") from exc


def model_from_spec(spec_json: str):
    """An (untrained) model of the structure an update names; refuses a spec that is not one."""
    try:
        return model_from_architecture(spec_json)
    except SpecError as exc:
        raise UpdateRejected(f"update names no buildable structure ({exc})", "structure") from exc


def apply_update(runtime, kind: int, spec_json: str, serving_spec: str, bundle: Bundle,
                 max_bytes: int = 64 * 1024 * 1024, swap=None):
    """Decode an admitted update and apply it to the runtime, all or nothing. ``serving_spec`` is the structure
    the runtime serves now. A new structure or new weights go through ``swap`` (default ``runtime.swap``; the
    edge agent may pass ``runtime.swap_async`` and get a Future back, so frames keep being served while the
    new model is built)."""
    swap = swap or runtime.swap
    if kind == KIND_NORM_AFFINE:
        if spec_json != serving_spec:
            raise UpdateRejected("affine update for another sub-model structure", "structure")
        runtime.apply_affine(unpack(bundle, max_bytes=max_bytes, templates=runtime.affine_templates()))
    elif kind == KIND_FULL:  # a user's own model (no structure on the wire) takes new weights for itself
        model = copy.deepcopy(runtime.model) if not spec_json and not serving_spec else model_from_spec(spec_json)
        return swap(model, unpack(bundle, max_bytes=max_bytes,
                                  templates={k: tuple(v.shape) for k, v in model.state_dict().items()}))
    elif kind == KIND_MODULES:
        spec = getattr(model_from_spec(spec_json), "spec", None)
        if spec is None:
            raise UpdateRejected("a modules update must name a modular structure", "structure")
        tensors = {k: torch.from_numpy(v) for k, v in unpack(bundle, max_bytes=max_bytes).items()}
        return swap(assemble(runtime.model, spec, tensors))
    else:
        raise UpdateRejected(f"unknown update kind {kind}", "kind")
    return None
