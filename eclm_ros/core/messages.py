"""What edges and the cloud say to each other, without ROS: one dataclass per message of the wire contract
(``msg/``, ``srv/``). The edge agent and the cloud coordinator speak only these; a transport carries them
(``eclm_ros.ros`` over DDS, ``transport.InMemoryNetwork`` in one process) and counts their bytes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .signing import upload_bytes
from .tensor_codec import Bundle, signing_bytes

KIND_NORM_AFFINE, KIND_MODULES, KIND_FULL = 0, 1, 2
KIND_NAMES = {KIND_NORM_AFFINE: "norm_affine", KIND_MODULES: "modules", KIND_FULL: "full"}
Stamp = tuple[int, int]  # (sec, nanosec) of a camera frame
FRAME_META_BYTES = 4 + 4 + 8  # per uploaded frame besides its pixels and probabilities: class, entropy, stamp
UPDATE_META_BYTES = 256  # a ModelUpdate's ids, versions, spec string and Ed25519 signature
MESSAGE_META_BYTES = 64  # header, ids and sequence numbers of any other message
MAX_UPLOAD_BATCH = 1024  # frames in one SampleBatch: an edge sends at most this many, the cloud decodes no more


@dataclass(frozen=True)
class Profile:
    """What an edge can do (msg/DeviceProfile): a trainable edge adapts itself; 0 means no limit."""

    trainable: bool = False
    max_params: int = 0
    max_macs: int = 0
    max_latency_ms: float = 0.0
    device: str = field(default="generic", compare=False)  # only reported: it derives no sub-model


@dataclass(frozen=True)
class Registration:
    """An edge's registration, which doubles as its heartbeat (srv/RegisterEdge request)."""

    edge_id: str
    profile: Profile
    current_version: int


@dataclass(frozen=True)
class RegistrationReply:
    accepted: bool
    message: str
    submodel_spec: str = ""
    version: int = 0


@dataclass
class SampleBatch:
    """Frames an edge selected, as encoded images (its model's view), with what its model said of them."""

    edge_id: str
    batch_seq: int
    model_version: int
    encoding: str
    frames: list[bytes]
    shapes: list[tuple[int, int, int]]  # (width, height, channels) per frame
    stamps: list[Stamp]
    predicted_class: list[int]
    entropy: list[float]
    probabilities: np.ndarray  # float32 [frames, classes]
    signature_scheme: str = ""
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return upload_bytes("samples", self.edge_id, [self.batch_seq, self.model_version, self.encoding],
                            self.frames)

    @property
    def wire_size(self) -> int:
        per_frame = FRAME_META_BYTES + 4 * self.probabilities.shape[1] if self.frames else 0
        return MESSAGE_META_BYTES + sum(len(f) for f in self.frames) + len(self.frames) * per_frame


@dataclass
class LearnedModules:
    """A trainable edge's adapted modules, for the cloud to integrate (ECLM)."""

    edge_id: str
    base_version: int
    submodel_spec: str
    frames: int
    bundle: Bundle
    signature_scheme: str = ""
    signature: bytes = b""

    def signed_bytes(self) -> bytes:
        return upload_bytes("modules", self.edge_id, [self.base_version, self.submodel_spec, self.frames],
                            self.bundle.signed_parts())

    @property
    def wire_size(self) -> int:
        return MESSAGE_META_BYTES + len(self.submodel_spec) + self.bundle.wire_size


@dataclass(frozen=True)
class UpdateHeader:
    """Every field of a ModelUpdate that decides what an edge does with it (all of them are signed)."""

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


@dataclass
class ModelUpdate:
    """One update, or one chunk of it: ``bundle.payload`` is then the chunk, the digest that of the whole."""

    header: UpdateHeader
    bundle: Bundle
    chunk_index: int = 0
    chunk_count: int = 1
    learned_batch_seq: int = 0  # the target edge's newest upload batch it learned from (0: none); informative, unsigned

    @property
    def wire_size(self) -> int:
        return UPDATE_META_BYTES + self.bundle.wire_size


@dataclass
class EdgeStatus:
    """What an edge reports about itself every second."""

    edge_id: str
    profile: Profile
    model_version: int
    submodel_spec: str
    fps: float = 0.0
    latency_p50_ms: float = 0.0
    upload_ratio: float = 0.0
    frames_seen: int = 0
    frames_uploaded: int = 0
    updates_applied: int = 0
    updates_rejected: int = 0
    upload_queue: int = 0
    mean_entropy: float = 0.0


@dataclass
class Prediction:
    """What the edge says of one frame."""

    class_id: int
    label: str
    score: float
    entropy: float
    model_version: int
    selected: bool
    probs: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.float32))
