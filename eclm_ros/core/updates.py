"""Model-update admission: which updates an edge may apply, and the signatures that prove their origin.

An edge applies an update only if it is addressed to it, moves its version forward from exactly the version
it serves (a full update may start from any version), fits the size limit, and, when the edge holds the
cloud's public key, carries a valid signature over every field that decides what the edge does with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from .signing import SCHEME, SignatureError, key_id, sign, verify
from .tensor_codec import Bundle, digest, signing_bytes, unpack

KIND_NORM_AFFINE, KIND_MODULES, KIND_FULL = 0, 1, 2
KIND_NAMES = {KIND_NORM_AFFINE: "norm_affine", KIND_MODULES: "modules", KIND_FULL: "full"}


class UpdateRejected(ValueError):
    """Why an update was not applied; the edge keeps serving its last good model."""


@dataclass(frozen=True)
class UpdateHeader:
    target_edge: str
    update_id: str
    version: int
    base_version: int
    kind: int
    submodel_spec: str
    signature_scheme: str = ""
    key_id: str = ""
    signature: bytes = b""

    def signed_bytes(self, bundle_digest: str) -> bytes:
        return signing_bytes(target_edge=self.target_edge, update_id=self.update_id, version=self.version,
                             base_version=self.base_version, kind=self.kind, submodel_spec=self.submodel_spec,
                             bundle_digest=bundle_digest)


def signature_for(header: UpdateHeader, bundle: Bundle, private_key) -> tuple[str, str, bytes]:
    """(scheme, key id, signature) for an update."""
    return SCHEME, key_id(private_key.public_key()), sign(private_key, header.signed_bytes(bundle.digest))


def check_update(header: UpdateHeader, bundle: Bundle, *, edge_id: str, current_version: int,
                 public_key=None, max_bytes: int = 64 * 1024 * 1024) -> None:
    """Raise UpdateRejected with the reason unless the edge may apply this update."""
    if digest(bundle.payload) != bundle.digest:
        raise UpdateRejected("digest mismatch: the payload was altered or truncated in transit")
    if header.target_edge not in (edge_id, "*"):
        raise UpdateRejected(f"update {header.update_id[:8]} is for {header.target_edge!r}, not {edge_id!r}")
    if header.kind not in KIND_NAMES:
        raise UpdateRejected(f"unknown update kind {header.kind}")
    if header.version <= current_version:
        raise UpdateRejected(f"stale update: version {header.version} <= serving version {current_version}")
    if header.kind != KIND_FULL and header.base_version != current_version:
        raise UpdateRejected(f"update applies on version {header.base_version}, the edge serves {current_version}")
    if len(bundle.payload) > max_bytes:
        raise UpdateRejected(f"update of {len(bundle.payload)} bytes exceeds the limit of {max_bytes}")
    if public_key is not None:
        if header.signature_scheme != SCHEME:
            raise UpdateRejected(f"unsigned update (scheme {header.signature_scheme!r}) refused: a cloud key is set")
        try:
            verify(public_key, header.signed_bytes(bundle.digest), header.signature)
        except SignatureError as exc:
            raise UpdateRejected(f"bad signature: {exc}") from exc


def model_from_spec(spec_json: str):
    """An (untrained) model of the structure an update names; refuses a spec that is not one."""
    from .models import ModularNet, SpecError

    try:
        config = json.loads(spec_json)
        return ModularNet(**config)
    except (ValueError, TypeError) as exc:
        raise UpdateRejected(f"update names no buildable structure ({exc})") from exc
    except SpecError as exc:
        raise UpdateRejected(str(exc)) from exc


def apply_update(runtime, kind: int, spec_json: str, serving_spec: str, bundle: Bundle,
                 max_bytes: int = 64 * 1024 * 1024, swap=None):
    """Decode an admitted update and apply it to the runtime, all or nothing (the edge node and the benchmark
    both apply updates here). ``serving_spec`` is the structure the runtime serves now. A new structure or new
    weights go through ``swap`` (default ``runtime.swap``; the node passes ``runtime.swap_async`` and gets a
    Future back, so frames keep being served while the new model is built)."""
    from .compose import assemble
    from .models import SubModelSpec

    swap = swap or runtime.swap
    if kind == KIND_NORM_AFFINE:
        if spec_json != serving_spec:
            raise UpdateRejected("affine update for another sub-model structure")
        runtime.apply_affine(unpack(bundle, max_bytes=max_bytes, templates=runtime.affine_templates()))
    elif kind == KIND_FULL:
        model = model_from_spec(spec_json)
        return swap(model, unpack(bundle, max_bytes=max_bytes,
                                  templates={k: tuple(v.shape) for k, v in model.state_dict().items()}))
    elif kind == KIND_MODULES:
        import torch

        spec = SubModelSpec(tuple(tuple(m) for m in model_from_spec(spec_json).config()["module_ids"]))
        tensors = {k: torch.from_numpy(v) for k, v in unpack(bundle, max_bytes=max_bytes).items()}
        return swap(assemble(runtime.model, spec, tensors))
    else:
        raise UpdateRejected(f"unknown update kind {kind}")
    return None
