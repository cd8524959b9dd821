"""Ed25519 signatures for what crosses the edge-cloud link, both ways.

An edge must not load weights that anyone on the DDS domain could publish: the cloud signs each update's
canonical bytes (``tensor_codec.signing_bytes``) and edges holding the cloud's public key verify them. The
other way round, frames and learned modules teach the cloud model, which then reaches every edge: a node that
merely knows an edge's id must not be able to poison it. Edges sign their uploads; a cloud given a directory of
edge public keys (``EdgeKeys``) learns only from uploads their edge signed.

Secure by default: the nodes find their keys in one key ring per machine (``KeyRing``, made by ``eclm-ros
keys``) and refuse to start without them unless the operator opts out for a lab (``insecure``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
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
            if not _names_a_key_file(edge_id) or not path.is_file():
                raise SignatureError(f"no enrolled key for edge {edge_id!r} (expected {path})")
            key = self.keys[edge_id] = load_public_key(path)
        verify(key, data, signature)


def _names_a_key_file(edge_id: str) -> bool:
    """An edge id that stays inside the key folder (no path separators, no hidden or parent names)."""
    return bool(edge_id) and "/" not in edge_id and not edge_id.startswith(".")


def verify(public_key: Ed25519PublicKey, data: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is the key's signature of ``data``."""
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        public_key.verify(bytes(signature), data)
    except InvalidSignature as exc:
        raise SignatureError("signature does not match: forged, altered in transit, or signed by another key") from exc


KEYS_ENV = "ECLM_ROS_KEYS"
LAB_FIX = "or, in a lab only, set the node parameter insecure: true"


@dataclass(frozen=True)
class KeyRing:
    """Where a machine keeps its keys: ``cloud.pem`` / ``cloud.pub`` (the cloud's pair; robots need only the
    public half), ``edge-<id>.pem`` (an edge's private key, on its robot) and ``edges/<id>.pem`` (the edges'
    public keys, which the cloud trusts). One command (``eclm-ros keys init robot1 ...``) fills it."""

    root: Path

    @classmethod
    def at(cls, path: str | Path = "") -> "KeyRing":
        """``path``, else $ECLM_ROS_KEYS, else ~/.config/eclm_ros/keys."""
        return cls(Path(path or os.environ.get(KEYS_ENV) or Path.home() / ".config" / "eclm_ros" / "keys"))

    @property
    def cloud_private(self) -> Path:
        return self.root / "cloud.pem"

    @property
    def cloud_public(self) -> Path:
        return self.root / "cloud.pub"

    @property
    def edges(self) -> Path:
        return self.root / "edges"

    def edge_private(self, edge_id: str) -> Path:
        return self.root / f"edge-{edge_id}.pem"

    def edge_public(self, edge_id: str) -> Path:
        return self.edges / f"{edge_id}.pem"

    def init_cloud(self) -> bool:
        """The cloud's key pair and the (empty) enrolment folder; False when the pair already exists."""
        self.edges.mkdir(parents=True, exist_ok=True)
        if self.cloud_private.is_file() and self.cloud_public.is_file():
            return False
        save_key_pair(generate_key(), self.cloud_private, self.cloud_public)
        return True

    def enrol(self, edge_id: str) -> bool:
        """An edge's key pair, its public half where the cloud reads it; False when it is already enrolled."""
        if not _names_a_key_file(edge_id):
            raise SignatureError(f"edge id {edge_id!r} cannot name a key file")
        self.edges.mkdir(parents=True, exist_ok=True)
        if self.edge_private(edge_id).is_file() and self.edge_public(edge_id).is_file():
            return False
        save_key_pair(generate_key(), self.edge_private(edge_id), self.edge_public(edge_id))
        return True

    def revoke(self, edge_id: str) -> bool:
        """Stop trusting an edge (its public key leaves ``edges/``); False when it was not enrolled."""
        path = self.edge_public(edge_id)
        if not path.is_file():
            return False
        path.unlink()
        return True


def _key(path: str | Path, loader, needed: bool, what: str, fix: str):
    """The key at ``path``; None when it is absent and not ``needed``; SignatureError naming the fix otherwise."""
    if Path(path).is_file():
        return loader(path)
    if needed:
        raise SignatureError(f"{what} {path} is missing: {fix}, {LAB_FIX}")
    return None


def edge_keys(ring: KeyRing, edge_id: str, cloud_public: str = "", private: str = "",
              insecure: bool = False) -> tuple[Ed25519PublicKey | None, Ed25519PrivateKey | None]:
    """An edge's keys: the cloud's public key (updates it applies must carry the cloud's signature) and its
    own private key (it signs its uploads). Explicit paths win over the key ring; without ``insecure`` both
    must exist."""
    fix = (f"make them with 'eclm-ros keys init {edge_id}' on the cloud machine and copy cloud.pub and "
           f"edge-{edge_id}.pem into {ring.root} on this robot (or set cloud_public_key / private_key)")
    return (_key(cloud_public or ring.cloud_public, load_public_key, not insecure, "the cloud's public key", fix),
            _key(private or ring.edge_private(edge_id), load_private_key, not insecure, "this edge's private key",
                 fix))


def cloud_keys(ring: KeyRing, private: str = "", edge_keys_dir: str = "",
               insecure: bool = False) -> tuple[Ed25519PrivateKey | None, EdgeKeys | None]:
    """A cloud's keys: its private key (it signs every update) and the enrolled edges (it learns only from
    uploads they signed). Explicit paths win over the key ring; without ``insecure`` both must exist."""
    fix = "make them with 'eclm-ros keys init <edge id> ...' (or set private_key / edge_keys_dir)"
    key = _key(private or ring.cloud_private, load_private_key, not insecure, "the cloud's private key", fix)
    directory = Path(edge_keys_dir or ring.edges)
    if directory.is_dir():
        return key, EdgeKeys(directory)
    if insecure:
        return key, None
    raise SignatureError(f"the enrolled edges' folder {directory} is missing: {fix}, {LAB_FIX}")
