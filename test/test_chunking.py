"""Chunked payloads: split at a limit, reassembled whatever the order, duplicates and losses, within bounded
memory; a tensor bundle survives the trip and its digest still guards the whole."""
import numpy as np
import pytest

from eclm_ros.core.chunking import ChunkError, Reassembler, split
from eclm_ros.core.tensor_codec import Bundle, CodecError, pack, unpack


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_split_respects_the_limit_and_joins_back(rng):
    payload = rng.bytes(10_001)
    chunks = split(payload, 1000)
    assert len(chunks) == 11 and all(len(c) <= 1000 for c in chunks)
    assert b"".join(chunks) == payload
    assert split(payload, 20_000) == [payload]
    assert split(b"", 10) == [b""]
    with pytest.raises(ValueError):
        split(payload, 0)


def test_reassembles_in_any_order_with_duplicates(rng):
    payload = rng.bytes(50_000)
    chunks = split(payload, 4096)
    r = Reassembler()
    order = rng.permutation(len(chunks)).tolist()
    results = []
    for i in order + order[:3]:  # every chunk, then some again
        results.append(r.add("u1", i, len(chunks), chunks[i]))
    complete = [x for x in results if x is not None]
    assert complete == [payload]
    assert results.index(payload) == len(chunks) - 1  # exactly when the last missing chunk came
    assert r.pending == 0 and r.held_bytes == 0
    assert r.add("u1", 0, len(chunks), chunks[0]) is None  # a late duplicate starts nothing new
    assert r.pending == 0


def test_interleaved_payloads_and_single_chunks(rng):
    a, b = rng.bytes(9000), rng.bytes(7000)
    ca, cb = split(a, 2000), split(b, 2000)
    r = Reassembler()
    out = {}
    for i in range(max(len(ca), len(cb))):
        for key, chunks in (("a", ca), ("b", cb)):
            if i < len(chunks):
                got = r.add(key, i, len(chunks), chunks[i])
                if got is not None:
                    out[key] = got
    assert out == {"a": a, "b": b}
    assert r.add("c", 0, 1, b"xyz") == b"xyz"


def test_a_lost_chunk_expires_and_is_reported(rng):
    clock = Clock()
    payload = rng.bytes(10_000)
    chunks = split(payload, 1000)
    r = Reassembler(timeout_s=5.0, clock=clock)
    for i, c in enumerate(chunks):
        if i != 4:
            assert r.add("lost", i, len(chunks), c) is None
    assert r.pending == 1 and r.held_bytes == 9000
    clock.now = 6.0
    assert r.expire() == ["lost"]
    assert r.pending == 0 and r.held_bytes == 0
    assert r.take_dropped() == [("lost", "incomplete after 5 s")]
    assert r.take_dropped() == []
    assert r.add("lost", 4, len(chunks), chunks[4]) is None  # the straggler completes nothing
    again = [r.add("resent", i, len(chunks), c) for i, c in enumerate(chunks)]  # the sender's retry
    assert again[-1] == payload


def test_memory_stays_bounded(rng):
    r = Reassembler(max_payloads=2, max_bytes=10_000)
    for key in ("old", "mid", "new"):
        r.add(key, 0, 3, rng.bytes(1000))
    assert r.pending == 2 and [k for k, _ in r.take_dropped()] == ["old"]
    r.add("big", 0, 2, rng.bytes(6000))  # a third payload again: "mid" gives way
    assert r.pending == 2 and r.held_bytes == 7000 and [k for k, _ in r.take_dropped()] == ["mid"]
    with pytest.raises(ChunkError, match="memory limit"):  # larger than everything the reassembler may hold
        r.add("huge", 0, 3, rng.bytes(10_001))
    assert r.pending == 0 and r.held_bytes == 0
    assert [k for k, _ in r.take_dropped()] == ["new", "big", "huge"]


def test_contradicting_chunks_are_refused():
    r = Reassembler()
    r.add("u", 0, 3, b"a")
    with pytest.raises(ChunkError, match="earlier ones said 3"):
        r.add("u", 1, 4, b"b")
    for index, count in ((3, 3), (-1, 3), (0, 0)):
        with pytest.raises(ChunkError, match="out of range"):
            r.add("u", index, count, b"c")


def test_a_bundle_survives_chunking_and_its_digest_guards_the_whole(rng):
    tensors = {"a": rng.standard_normal((300, 40)).astype(np.float32), "b": np.arange(999, dtype=np.int64)}
    bundle = pack(tensors, compress=False)
    chunks = split(bundle.payload, 4000)
    r = Reassembler()
    payload = None
    for i in rng.permutation(len(chunks)).tolist():
        payload = r.add("b1", i, len(chunks), chunks[i]) or payload
    rebuilt = Bundle(bundle.specs, payload, bundle.compression, bundle.raw_size, bundle.digest)
    out = unpack(rebuilt)
    assert all(np.array_equal(out[k], v) for k, v in tensors.items())
    tampered = bytearray(payload)
    tampered[123] ^= 1
    with pytest.raises(CodecError):
        unpack(Bundle(bundle.specs, bytes(tampered), bundle.compression, bundle.raw_size, bundle.digest))
