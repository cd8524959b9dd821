"""Ed25519 signatures for what crosses the edge-cloud link, both ways.

An edge must not load weights that anyone on the DDS domain could publish: the cloud signs each update's
canonical bytes (``tensor_codec.signing_bytes``) and edges holding the cloud's public key verify them. The
other way round, frames and learned modules teach the cloud model, which then reaches every edge: a node that
merely knows an edge's id must not be able to poison it. Edges sign their uploads; a cloud given a directory of
edge public keys (``EdgeKeys``) learns only from uploads their edge signed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SCHEME = "ed25519"


class SignatureError(ValueError):
    """A signature is missing, malformed, made with another key, or does not match the data."""


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_key_pair(key: Ed25519PrivateKey, private_path: Path, public_path: Path) -> None:
    """Write the private key (0600) and the public key as PEM files."""
    private_path = Path(private_path)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    Path(public_path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load private key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key")
    return key


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short fingerprint naming which key signed an update."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def upload_bytes(kind: str, edge_id: str, fields: list, payloads: list[bytes]) -> bytes:
    """The canonical bytes an edge signs for one upload (``kind``: "samples" or "modules"): its id, the fields
    that decide what the cloud does with it, and a length-prefixed SHA-256 over every payload (the frames, or
    the module bundle)."""
    h = hashlib.sha256()
    for blob in payloads:
        h.update(len(blob).to_bytes(8, "little"))
        h.update(blob)
    return "\n".join([f"eclm-{kind}/1", edge_id, *map(str, fields), h.hexdigest()]).encode()


class EdgeKeys:
    """The edges a cloud trusts: ``<edge_id>.pem`` public keys in one directory, read when first needed so an
    operator can enrol an edge without restarting the cloud."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise SignatureError(f"edge key directory {self.directory} does not exist")
        self.keys: dict[str, Ed25519PublicKey] = {}

    def check(self, edge_id: str, data: bytes, scheme: str, signature: bytes) -> None:
        """Raise SignatureError unless ``data`` carries a valid signature by ``edge_id``'s enrolled key."""
        if scheme != SCHEME:
            raise SignatureError(f"unsigned upload (scheme {scheme!r}) from {edge_id!r} refused: edge keys are set")
        key = self.keys.get(edge_id)
        if key is None:
            path = self.directory / f"{edge_id}.pem"
            if not edge_id or "/" in edge_id or edge_id.startswith(".") or not path.is_file():
                raise SignatureError(f"no enrolled key for edge {edge_id!r} (expected {path})")
            key = self.keys[edge_id] = load_public_key(path)
        verify(key, data, signature)


def verify(public_key: Ed25519PublicKey, data: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is the key's signature of ``data``."""
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        public_key.verify(bytes(signature), data)
    except InvalidSignature as exc:
        raise SignatureError("signature does not match: forged, altered in transit, or signed by another key") from exc
