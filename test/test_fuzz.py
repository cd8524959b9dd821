"""Every decoder that reads network or camera bytes, fuzzed with hypothesis (eclm_ros/bench/fuzz.py): mutated
valid encodings, forged sizes and random bytes are refused with the decoder's own error, never anything else,
and the inputs the fuzzer found crashing or allocating gigabytes before the fixes stay refused. A fixed seed
keeps CI deterministic; `eclm-ros bench-faults --fuzz-examples N` runs the same targets much longer."""
import numpy as np
import pytest

from node_processes import ros_available

from eclm_ros.bench.fuzz import TARGETS, Context, fuzz
from eclm_ros.core import tensor_codec as codec
from eclm_ros.core.selection import decode_frames, encode_frames

EXAMPLES = 500


@pytest.fixture(scope="module")
def context(quick_cache):
    from eclm_ros.core.checkpoint import default_path

    return Context(default_path("cloud", True, quick_cache), default_path("edge", True, quick_cache))


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_network_decoder_refuses_malformed_input_with_its_own_error(name, context):
    target = TARGETS[name]
    if target.needs_ros and ros_available():
        pytest.skip(ros_available())
    tally = fuzz(target, context, EXAMPLES, seed=0, strict=True)  # a crash fails here, shrunk to its input
    assert tally.crashes == 0 and tally.examples >= EXAMPLES
    assert tally.refused > 0 and tally.valid > 0, f"the inputs reached only one side of {name}: {tally.row()}"


def _blob(header: bytes) -> bytes:
    return codec._BLOB_MAGIC + len(header).to_bytes(4, "little") + header


@pytest.mark.parametrize("blob,reason", [
    (_blob(b'{"compression":"none","raw_size":0,"digest":"","tensors":[["x","float32",[1],"raw",1' + b"0" * 400
           + b',0,0,4]]}'), "OverflowError"),  # a number no float holds
    (_blob(b"[" * 100_000), "RecursionError"),  # nesting beyond the JSON parser
])
def test_bundle_headers_the_fuzzer_found_are_codec_errors(blob, reason):
    with pytest.raises(codec.CodecError, match=reason):
        codec.Bundle.from_bytes(blob)


@pytest.mark.parametrize("shape", [(2**40, 2**40), (2**70,), (0, 2**64), (0, 2**31 - 1, 2**31 - 1)])
def test_a_forged_shape_is_refused_before_numpy_sees_it(shape):
    """Counted in int64 the first wrapped around to 0 elements, matching an empty payload; the others
    overflowed numpy ('Python int too large', 'Maximum allowed dimension exceeded', 'array is too big')."""
    payload = b""
    bundle = codec.Bundle((codec.TensorSpec("x", "float32", shape, "raw", 0.0, 0, 0, 0),), payload, "none", 0,
                          codec.digest(payload))
    with pytest.raises(codec.CodecError, match="tensor 'x'"):
        codec.unpack(bundle)


def test_a_png_chunk_claiming_a_gigabyte_is_refused_before_decoding():
    """72 bytes whose second chunk claims 1.1 GB: OpenCV's reader allocated it (1.1 GB of RSS, 0.6 s)."""
    png = encode_frames([np.zeros((34, 31), np.uint8)])[0]
    forged = png[:33] + (0x4500044B).to_bytes(4, "big") + png[37:]
    with pytest.raises(ValueError, match="PNG chunk at byte 33 claims 1157629003 bytes"):
        decode_frames([forged])
