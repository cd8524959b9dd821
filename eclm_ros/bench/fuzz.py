"""Property-based fuzzing (hypothesis) of every decoder that reads bytes from the network or a camera.

Each ``Target`` names one decoder, the documented error it refuses malformed input with, and a hypothesis
strategy of inputs: valid encodings mutated (bytes flipped, inserted, deleted, truncated), forged fields
(sizes, counts, shapes, offsets far beyond what any buffer holds) and plain random bytes. The property is the
same for all: the decoder returns (the input was still valid) or raises its own error type (refused), never
anything else, in bounded time and memory. ``fuzz`` runs one target and counts the outcomes: the suite
(test/test_fuzz.py) runs a few hundred examples each and fails on the first crash, shrunk to a minimal
input; ``eclm-ros bench-faults --fuzz-examples N`` runs N each and counts crashes instead of stopping.
"""
from __future__ import annotations

import logging
import math
import resource
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..core import tensor_codec as codec
from ..core.chunking import ChunkError, Reassembler, split
from ..core.messages import (KIND_FULL, KIND_MODULES, KIND_NORM_AFFINE, ModelUpdate, Profile, Registration,
                             UpdateHeader)
from ..core.selection import decode_frames
from ..core.signing import EdgeKeys, SignatureError, generate_key, save_key_pair, sign
from ..core.updates import UpdateRejected, check_update, signature_for

EDGE = "robot1"


@dataclass
class Tally:
    """What one target's run came to: every example is refused with the proper error, still valid, or a
    crash (any other exception, or a broken invariant)."""

    target: str
    examples: int = 0
    refused: int = 0
    valid: int = 0
    crashes: int = 0
    first_crash: str = ""
    max_example_s: float = 0.0
    rss_mb: float = 0.0  # the process's peak resident memory once the run ended

    def row(self) -> dict[str, Any]:
        return {"decoder": self.target, "examples": self.examples, "refused": self.refused, "valid": self.valid,
                "crashes": self.crashes, "max_example_ms": round(self.max_example_s * 1000, 1),
                "peak_rss_mb": round(self.rss_mb), "first_crash": self.first_crash}


@dataclass(frozen=True)
class Target:
    """One decoder: ``decode(context, value)`` returns False for a refusal it reports without raising
    (the coordinator's and the edge agent's handlers count and log instead), anything else when it accepted."""

    name: str
    what: str
    inputs: Callable[[], Any]  # () -> hypothesis strategy
    decode: Callable[["Context", Any], object]
    refusal: tuple[type[BaseException], ...]
    needs_ros: bool = False


# -- inputs ---------------------------------------------------------------------------------------------------
def _st():
    from hypothesis import strategies as st

    return st


def mutate(blob: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    """``blob`` with byte edits applied in order (positions wrap around the current length)."""
    b = bytearray(blob)
    for op, pos, data in edits:
        i = pos % (len(b) + 1)
        if op == "flip" and b:
            b[i % len(b)] ^= data[0] or 0xFF
        elif op == "insert":
            b[i:i] = data
        elif op == "delete":
            del b[i:i + len(data) * 7]
        elif op == "truncate":
            del b[i:]
    return bytes(b)


def _edits(max_edits: int = 4):
    st = _st()
    return st.lists(st.tuples(st.sampled_from(("flip", "insert", "delete", "truncate")), st.integers(0, 1 << 20),
                              st.binary(min_size=1, max_size=8)), max_size=max_edits)


def _sizes():
    """Sizes and counts as a forger picks them: small, on a type's edge, or far beyond any buffer."""
    st = _st()
    edges = (-1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1)
    return st.one_of(st.integers(0, 64), st.sampled_from(edges), st.integers(-2**70, 2**70))


def _tensors(seed: int, count: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(count):
        dtype = codec.DTYPES[int(rng.integers(len(codec.DTYPES)))]
        shape = tuple(int(d) for d in rng.integers(0, 5, int(rng.integers(0, 4))))
        out[f"t{i}"] = (rng.standard_normal(shape) * 3).astype(dtype) if dtype != "bool" else rng.random(shape) > .5
    return out


def _valid_bundles():
    st = _st()
    return st.builds(lambda seed, n, enc, z: codec.pack(_tensors(seed, n), encoding=enc, compress=z),
                     st.integers(0, 2**32 - 1), st.integers(1, 3), st.sampled_from(codec.ENCODINGS), st.booleans())


def _forged_bundles():
    """Bundles whose specs and sizes are drawn freely, with a digest that matches (a digest is no secret)."""
    st = _st()
    spec = st.builds(codec.TensorSpec, st.text(max_size=6), st.sampled_from((*codec.DTYPES, "complex64", "object", "")),
                     st.lists(_sizes(), max_size=4).map(tuple), st.sampled_from((*codec.ENCODINGS, "int4", "")),
                     st.floats(), _sizes(), _sizes(), _sizes())

    def build(specs, payload, compress, raw_size):
        payload = zlib.compress(payload) if compress else payload
        return codec.Bundle(tuple(specs), payload, "zlib" if compress else "none", raw_size, codec.digest(payload))
    return st.builds(build, st.lists(spec, max_size=4), st.binary(max_size=256), st.booleans(),
                     st.one_of(_sizes(), st.integers(0, 256)))


def _bundle_bytes():
    st = _st()
    return st.one_of(st.builds(lambda b, e: mutate(b.to_bytes(), e), _valid_bundles(), _edits()),
                     _forged_bundles().map(lambda b: b.to_bytes()), st.binary(max_size=512))


def _image(seed: int, kind: str) -> bytes:
    """A small real PNG or JPEG: grey, colour, with alpha, or 16-bit."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    channels = {"grey": (), "colour": (3,), "alpha": (4,), "deep": ()}[kind.split("/")[0]]
    img = rng.integers(0, 65535 if kind.startswith("deep") else 255, (h, w, *channels))
    img = img.astype(np.uint16 if kind.startswith("deep") else np.uint8)
    ext = ".jpg" if kind.endswith("jpeg") and not kind.startswith(("alpha", "deep")) else ".png"
    return cv2.imencode(ext, img)[1].tobytes()


def _forged_header(fmt: str, width: int, height: int) -> bytes:
    """A PNG or JPEG whose header claims ``width`` x ``height`` over too little data."""
    if fmt == "png":
        ihdr = b"IHDR" + width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
        return (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big")
                + bytes(64))
    return b"\xff\xd8\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes(64)


def _image_bytes():
    st = _st()
    kinds = ("grey/png", "grey/jpeg", "colour/png", "colour/jpeg", "alpha/png", "deep/png")
    return st.one_of(st.builds(lambda s, k, e: mutate(_image(s, k), e), st.integers(0, 2**32 - 1),
                               st.sampled_from(kinds), _edits(3)),
                     st.builds(_forged_header, st.sampled_from(("png", "jpeg")), st.integers(0, 65535),
                               st.integers(0, 65535)),
                     st.binary(max_size=256))


# -- decoders -------------------------------------------------------------------------------------------------
class Context:
    """What the stateful decoders need: keys, a coordinator with one registered edge, an edge agent. Built once
    per run from two model files (the shipped defaults, or a cache's quick models)."""

    def __init__(self, cloud_model: Path, edge_model: Path) -> None:
        self.cloud_model, self.edge_model = cloud_model, edge_model
        self.cloud_key, self.edge_key = generate_key(), generate_key()
        self.tmp = Path(tempfile.mkdtemp(prefix="eclm-fuzz-"))
        (self.tmp / "edges").mkdir()
        save_key_pair(self.edge_key, self.tmp / "edge.pem", self.tmp / "edges" / f"{EDGE}.pem")
        self.edge_keys = EdgeKeys(self.tmp / "edges")
        self.seq = int(time.time_ns() // 1000)
        self.log = logging.getLogger("eclm_ros.fuzz")  # thousands of refusals: counted, not printed
        self.log.propagate = False
        self.log.addHandler(logging.NullHandler())

    def build(self) -> None:
        """Build the cloud and the edge now, so that no example's time includes it."""
        _ = self.coordinator, self.agent  # cached properties: built on first access

    @cached_property
    def coordinator(self):
        """A cloud in lab mode (no edge keys: the fuzzed frames and bundles reach their decoders; the
        signatures have a target of their own), one edge registered."""
        from ..core import checkpoint
        from ..core.coordinator import Coordinator
        from ..core.strategies import make_strategy
        from ..core.transport import InMemoryNetwork, SimClock

        net = InMemoryNetwork(SimClock())
        cloud = Coordinator(make_strategy("eclm_ros", checkpoint.load(self.cloud_model)), net.cloud_link(),
                            log=self.log)
        reply = cloud.register(Registration(EDGE, Profile(), 0))
        self.served_spec = reply.submodel_spec
        return cloud

    def drain(self) -> None:
        """Forget queued uploads: the fuzz run tests admission, not learning."""
        self.coordinator.discard_queued()

    @cached_property
    def agent(self):
        """An edge agent holding the cloud's public key, serving the edge model (torch, inline swaps)."""
        from ..core import checkpoint
        from ..core.edge_agent import EdgeAgent, EdgeConfig
        from ..core.edge_runtime import make_runtime
        from ..core.transport import InMemoryNetwork, SimClock

        ckpt = checkpoint.load(self.edge_model)
        return EdgeAgent(make_runtime("torch", ckpt.model), ckpt.description,
                         InMemoryNetwork(SimClock()).connect(EDGE), EdgeConfig(edge_id=EDGE, max_update_bytes=1 << 20),
                         cloud_key=self.cloud_key.public_key(), log=self.log, threaded=False)


def _codec(ctx: Context, blob: bytes) -> object:
    tensors = codec.unpack(codec.Bundle.from_bytes(blob, max_bytes=1 << 20), max_bytes=1 << 20)
    assert all(isinstance(v, np.ndarray) for v in tensors.values())
    return tensors


def _chunks(ctx: Context, ops: list[tuple[str, int, int, bytes]]) -> bool:
    """A chunk stream into one reassembler: memory stays within its bounds whatever arrives."""
    r = Reassembler(max_payloads=3, max_bytes=256, timeout_s=60.0)
    refused = False
    for key, index, count, chunk in ops:
        try:
            payload = r.add(key, index, count, chunk)
        except ChunkError:
            refused = True
            continue
        assert r.held_bytes <= r.max_bytes and r.pending <= r.max_payloads, "reassembly memory over its bound"
        assert payload is None or isinstance(payload, bytes)
    return not refused


def _chunk_ops():
    st = _st()
    small = st.integers(-1, 5)
    op = st.tuples(st.sampled_from("abcd"), st.one_of(small, _sizes()), st.one_of(small, _sizes()),
                   st.binary(max_size=120))
    return st.lists(op, max_size=24)


def _frames(ctx: Context, value: tuple[list[bytes], int]) -> object:
    blobs, channels = value
    for img in decode_frames(blobs, channels):
        assert img.dtype == np.uint8 and img.ndim == (2 if channels == 1 else 3)
    return True


def _frame_lists():
    st = _st()
    return st.tuples(st.lists(_image_bytes(), min_size=1, max_size=3), st.sampled_from((1, 3)))


def _samples_msgs():
    """SampleBatch messages as the cloud node receives them: a registered or unknown edge, frames of any
    bytes, probabilities that fit the frames or not, a fresh or replayed sequence number."""
    st = _st()
    return st.fixed_dictionaries({
        "edge_id": st.sampled_from((EDGE, "ghost", "")), "frames": st.lists(_image_bytes(), max_size=3),
        "size": st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255)),
        "edits": _edits(2),
        "num_classes": st.one_of(st.just(10), st.integers(0, 2**32 - 1)),
        "extra_probs": st.one_of(st.just(0), st.integers(-3, 3)),
        "fresh": st.booleans(), "encoding": st.sampled_from(("png", "jpeg", "", "bmp"))})


def _samples(ctx: Context, plan: dict) -> bool:
    from ..msg import EncodedFrame, SampleBatch
    from ..ros.ros_io import samples_from_msg

    cloud = ctx.coordinator
    ctx.seq += 1
    w, h, c = plan["size"]
    classes = plan["num_classes"]
    n_probs = max(len(plan["frames"]) * min(classes, 16) + plan["extra_probs"], 0)
    msg = SampleBatch(edge_id=plan["edge_id"], batch_seq=ctx.seq if plan["fresh"] else 1, model_version=1,
                      encoding=plan["encoding"], num_classes=classes,
                      frames=[EncodedFrame(width=w, height=h, channels=c, data=f) for f in plan["frames"]],
                      probabilities=[0.1] * n_probs)
    try:
        return cloud.on_samples(samples_from_msg(msg))
    finally:
        ctx.drain()


def _modules_msgs():
    st = _st()
    return st.tuples(st.one_of(_valid_bundles(), _forged_bundles()), st.sampled_from(("served", "", "{}", "x")),
                     st.integers(0, 2**32 - 1))


def _modules(ctx: Context, value) -> bool:
    from ..msg import LearnedModules
    from ..ros.ros_io import bundle_to_msg, modules_from_msg

    bundle, spec, frames = value
    cloud = ctx.coordinator
    msg = LearnedModules(edge_id=EDGE, base_version=1, frames=frames,
                         submodel_spec=ctx.served_spec if spec == "served" else spec)
    try:
        bundle_to_msg(bundle, msg.bundle)
    except (AssertionError, ValueError, OverflowError):  # a field no ROS message can carry never arrives
        return False
    try:
        return cloud.on_modules(modules_from_msg(msg))
    finally:
        ctx.drain()


def _signed_upload_plans():
    st = _st()
    return st.fixed_dictionaries({
        "edge_id": st.one_of(st.just(EDGE), st.sampled_from(("robot2", "../" + EDGE, "." + EDGE, "", "a/b", "x\0y")),
                             st.text(max_size=12)),
        "data": st.binary(max_size=64), "data_edits": _edits(2), "scheme": st.sampled_from(("ed25519", "", "rsa")),
        "sig_edits": _edits(2), "random_sig": st.one_of(st.none(), st.binary(max_size=80))})


def _signed_upload(ctx: Context, plan: dict) -> bool:
    data = plan["data"]
    signature = sign(ctx.edge_key, data) if plan["random_sig"] is None else plan["random_sig"]
    ctx.edge_keys.check(plan["edge_id"], mutate(data, plan["data_edits"]), plan["scheme"],
                        mutate(signature, plan["sig_edits"]))
    return True


def _ros_text():
    """Strings as rclpy hands them over: valid Unicode (it decodes UTF-8), so no lone surrogates."""
    st = _st()
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


def _update_plans():
    st = _st()
    versions = st.one_of(st.integers(0, 8), st.integers(0, 2**64 - 1))
    return st.fixed_dictionaries({
        "target": st.one_of(st.just(EDGE), st.just("*"), _ros_text()), "version": st.one_of(st.none(), versions),
        "base": st.one_of(st.none(), versions), "kind": st.one_of(st.none(), st.integers(0, 255)),
        "spec": st.one_of(st.none(), _ros_text()), "payload_edits": _edits(2), "sig_edits": _edits(2),
        "scheme": st.sampled_from(("ed25519", "", "none")), "resign": st.booleans(), "big": st.booleans(),
        "chunks": st.one_of(st.just(1), st.integers(2, 5)),
        "chunk_edits": st.lists(st.tuples(st.integers(0, 8), _sizes(), _sizes()), max_size=2)})


def _update(ctx: Context, plan: dict, current: int = 5) -> tuple[UpdateHeader, codec.Bundle]:
    """A signed affine update from ``current`` to ``current + 1``, then altered as the plan says (and signed
    again after the alteration when ``resign``: a cloud that sends garbage in good faith)."""
    tensors = {"w": np.ones(1 << 19 if plan["big"] else 4, np.float32)}
    bundle = codec.pack(tensors)
    header = UpdateHeader(EDGE, uuid.uuid4().hex, current + 1, current, KIND_NORM_AFFINE, "{}")
    header = replace(header, **{k: plan[p] for k, p in (("target_edge", "target"), ("version", "version"),
                                                        ("base_version", "base"), ("kind", "kind"),
                                                        ("submodel_spec", "spec")) if plan[p] is not None})
    bundle = replace(bundle, payload=mutate(bundle.payload, plan["payload_edits"]))
    scheme, key_id, signature = signature_for(header, bundle, ctx.cloud_key)
    if not plan["resign"]:
        signature = mutate(signature, plan["sig_edits"])
    return replace(header, signature_scheme=plan["scheme"] or scheme, key_id=key_id, signature=signature), bundle


def _check_update(ctx: Context, plan: dict) -> bool:
    header, bundle = _update(ctx, plan)
    check_update(header, bundle, edge_id=EDGE, current_version=5, public_key=ctx.cloud_key.public_key(),
                 max_bytes=1 << 20, min_version=3)
    return True


def _edge_update(ctx: Context, plan: dict) -> bool:
    """Through the edge node's decoder (``update_from_msg``) into the agent: chunks, admission, tensors."""
    from builtin_interfaces.msg import Time

    from ..ros.ros_io import update_from_msg, update_to_msg

    agent = ctx.agent
    plan = {**plan, "spec": agent.spec if plan["spec"] is None else plan["spec"]}
    plan["kind"] = KIND_NORM_AFFINE if plan["kind"] is None else plan["kind"] % 3
    header, bundle = _update(ctx, plan, agent.version)
    if header.kind in (KIND_FULL, KIND_MODULES) and not plan["resign"]:
        header = replace(header, kind=KIND_NORM_AFFINE)  # a structure the cloud never signed is not built here
    if header.kind == KIND_NORM_AFFINE and plan["resign"] and header.submodel_spec == agent.spec:
        templates = agent.runtime.affine_templates()
        bundle = codec.pack({k: np.ones(s, np.float32) for k, s in templates.items()})
        header = replace(header, signature=signature_for(header, bundle, ctx.cloud_key)[2])
    parts = [ModelUpdate(header, replace(bundle, payload=c), i, plan["chunks"])
             for i, c in enumerate(split(bundle.payload, max(1, math.ceil(len(bundle.payload) / plan["chunks"]))))]
    for at, index, count in plan["chunk_edits"]:
        if parts:
            part = parts[at % len(parts)]
            parts[at % len(parts)] = replace(part, chunk_index=index % 2**32, chunk_count=count % 2**32)
    before = agent.counters["rejected_updates"] + agent.counters["ignored_updates"]
    for part in parts:
        agent.on_update(update_from_msg(update_to_msg(part, Time())))
    return agent.counters["rejected_updates"] + agent.counters["ignored_updates"] == before


def _image_msgs():
    st = _st()
    from ..ros.ros_io import ENCODINGS

    dims = st.one_of(st.integers(0, 48), st.integers(0, 2**32 - 1))
    return st.fixed_dictionaries({
        "encoding": st.one_of(st.sampled_from((*ENCODINGS, "32FC1", "bayer_rggb8", "")), _ros_text()),
        "height": dims, "width": dims, "step_extra": st.one_of(st.integers(-4, 8), st.integers(0, 2**32 - 1)),
        "bigendian": st.integers(0, 1), "exact": st.booleans(), "data": st.binary(max_size=256),
        "seed": st.integers(0, 2**32 - 1)})


def _raw_image(ctx: Context, plan: dict) -> object:
    from sensor_msgs.msg import Image

    from ..ros.ros_io import PIXEL_LAYOUTS, frame_from_msg

    channels, dtype = PIXEL_LAYOUTS.get(plan["encoding"], (2, "u1"))
    step = min(plan["width"] * channels * np.dtype(dtype).itemsize + plan["step_extra"], 2**32 - 1)
    data = plan["data"]
    if plan["exact"] and 0 <= step * plan["height"] <= 1 << 20:  # the size the header says
        data = np.random.default_rng(plan["seed"]).bytes(step * plan["height"])
    msg = Image(height=plan["height"], width=plan["width"], encoding=plan["encoding"], step=max(step, 0),
                is_bigendian=plan["bigendian"], data=data)
    return _frame(frame_from_msg(msg))


def _frame(result: tuple[np.ndarray, str]) -> object:
    frame, order = result
    assert frame.dtype == np.uint8 and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)), frame.shape
    assert order in ("rgb", "bgr")
    return True


def _compressed_msgs():
    st = _st()
    return st.tuples(st.one_of(st.sampled_from(("jpeg", "png", "bgr8; jpeg compressed bgr8", "16UC1; compressedDepth")),
                               _ros_text()), _image_bytes())


def _compressed_image(ctx: Context, value: tuple[str, bytes]) -> object:
    from sensor_msgs.msg import CompressedImage

    from ..ros.ros_io import frame_from_msg

    return _frame(frame_from_msg(CompressedImage(format=value[0], data=value[1])))


def _image_error() -> tuple[type[BaseException], ...]:
    from ..ros.ros_io import ImageError

    return (ImageError,)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("codec", "tensor_codec: Bundle.from_bytes + unpack", _bundle_bytes, _codec, (codec.CodecError,)),
    Target("chunks", "chunking.Reassembler.add (a stream of chunks)", _chunk_ops, _chunks, (ChunkError,)),
    Target("upload frames", "selection.decode_frames (PNG/JPEG uploads)", _frame_lists, _frames, (ValueError,)),
    Target("SampleBatch", "ros_io.samples_from_msg + Coordinator.on_samples", _samples_msgs, _samples, (ValueError,),
           needs_ros=True),
    Target("LearnedModules", "ros_io.modules_from_msg + Coordinator.on_modules", _modules_msgs, _modules, (),
           needs_ros=True),
    Target("upload signature", "signing.EdgeKeys.check", _signed_upload_plans, _signed_upload, (SignatureError,)),
    Target("update admission", "updates.check_update", _update_plans, _check_update, (UpdateRejected,)),
    Target("ModelUpdate", "ros_io.update_from_msg + EdgeAgent.on_update (chunks, admission, tensors)",
           _update_plans, _edge_update, (), needs_ros=True),
    Target("Image", "ros_io.frame_from_msg (sensor_msgs/Image)", _image_msgs, _raw_image, (), needs_ros=True),
    Target("CompressedImage", "ros_io.frame_from_msg (sensor_msgs/CompressedImage)", _compressed_msgs,
           _compressed_image, (), needs_ros=True),
)}


def refusals(target: Target) -> tuple[type[BaseException], ...]:
    """The error types ``target`` may raise: camera decoders raise ImageError (imported with ROS)."""
    return _image_error() if target.name in ("Image", "CompressedImage") else target.refusal


def fuzz(target: Target, ctx: Context, examples: int, seed: int = 0, strict: bool = True) -> Tally:
    """Run ``examples`` hypothesis examples of ``target``. ``strict`` (the suite): the first crash fails, shrunk
    to a minimal input; otherwise (the benchmark) crashes are counted and the run goes on."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fix_seed

    tally, allowed = Tally(target.name), refusals(target)

    @fix_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck),
              phases=(Phase.generate, Phase.shrink) if strict else (Phase.generate,))
    @given(target.inputs())
    def prop(value) -> None:
        t0 = time.perf_counter()
        try:
            outcome = target.decode(ctx, value)
        except allowed:
            outcome = False
        except Exception as exc:
            if strict:
                raise
            tally.crashes += 1
            tally.first_crash = tally.first_crash or f"{type(exc).__name__}: {str(exc)[:200]}"
            return
        finally:
            tally.examples += 1
            tally.max_example_s = max(tally.max_example_s, time.perf_counter() - t0)
        if outcome is False:
            tally.refused += 1
        else:
            tally.valid += 1

    prop()
    tally.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return tally
