import numpy as np
import pytest
import torch

from eclm_ros.core.tensor_codec import (DTYPES, Bundle, CodecError, TensorSpec, digest, pack, signing_bytes,
                                        unpack)


def _sample(rng):
    return {
        "conv.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "bn.weight": torch.ones(8),
        "bn.running_mean": rng.standard_normal(8),
        "bn.num_batches_tracked": np.array(7, dtype=np.int64),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_every_dtype(dtype, compress, rng):
    arr = (rng.standard_normal((3, 4)) * 50).astype(dtype)
    out = unpack(pack({"x": arr, "empty": np.zeros((0, 2), dtype=dtype)}, compress=compress))
    assert out["x"].dtype == arr.dtype and out["x"].shape == arr.shape
    np.testing.assert_array_equal(out["x"], arr)
    assert out["empty"].shape == (0, 2)


def test_torch_and_scalars_round_trip(rng):
    tensors = _sample(rng)
    out = unpack(pack(tensors))
    np.testing.assert_array_equal(out["bn.weight"], np.ones(8, np.float32))
    assert out["bn.num_batches_tracked"].shape == () and out["bn.num_batches_tracked"] == 7
    assert out["bn.running_mean"].dtype == np.float64


def test_blob_round_trip(rng):
    bundle = pack(_sample(rng))
    again = Bundle.from_bytes(bundle.to_bytes())
    assert again.digest == bundle.digest and again.specs == bundle.specs
    assert bundle.wire_size == len(bundle.to_bytes()) - 12


@pytest.mark.parametrize("encoding,bound", [("fp16", 1e-3), ("int8", None)])
def test_quantised_encodings_are_smaller_and_close(encoding, bound, rng):
    x = rng.standard_normal(10_000).astype(np.float32)
    raw = pack({"x": x}, compress=False)
    q = pack({"x": x}, encoding=encoding, compress=False)
    assert len(q.payload) <= len(raw.payload) // 2
    out = unpack(q)["x"]
    assert out.dtype == np.float32
    spec = q.specs[0]
    tol = bound * np.abs(x).max() if bound else spec.scale / 2 + 1e-6
    assert np.abs(out - x).max() <= tol


def test_int_tensors_stay_exact_under_quantisation():
    idx = np.arange(100, dtype=np.int64)
    out = unpack(pack({"i": idx}, encoding="int8"))
    np.testing.assert_array_equal(out["i"], idx)


def test_constant_tensor_int8():
    out = unpack(pack({"c": np.full(5, 3.0, np.float32)}, encoding="int8"))
    np.testing.assert_allclose(out["c"], 3.0, atol=0.5)


def test_wrong_digest_rejected(rng):
    b = pack(_sample(rng))
    bad = bytearray(b.payload)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(CodecError, match="digest"):
        unpack(Bundle(b.specs, bytes(bad), b.compression, b.raw_size, b.digest))


def test_truncated_payload_rejected_even_with_matching_digest(rng):
    b = pack(_sample(rng))
    cut = b.payload[:-10]
    with pytest.raises(CodecError, match="truncated|decompress"):
        unpack(Bundle(b.specs, cut, b.compression, b.raw_size, digest(cut)))
    raw = pack(_sample(rng), compress=False)
    cut = raw.payload[:-10]
    with pytest.raises(CodecError, match="declares"):
        unpack(Bundle(raw.specs, cut, raw.compression, raw.raw_size, digest(cut)))


def test_truncated_blob_rejected(rng):
    blob = pack(_sample(rng)).to_bytes()
    with pytest.raises(CodecError):
        unpack(Bundle.from_bytes(blob[:-5]))
    with pytest.raises(CodecError, match="magic"):
        Bundle.from_bytes(b"garbage")
    with pytest.raises(CodecError, match="truncated"):
        Bundle.from_bytes(blob[:20])


def test_oversized_rejected(rng):
    b = pack({"x": np.zeros(1000, np.float32)})
    with pytest.raises(CodecError, match="exceeds"):
        unpack(b, max_bytes=1000)


def test_zip_bomb_rejected():
    b = pack({"x": np.zeros(1000, np.float32)})
    lying = Bundle(b.specs, b.payload, b.compression, 100, b.digest)
    with pytest.raises(CodecError):
        unpack(lying)


def _forge(b: Bundle, **changes) -> Bundle:
    spec = b.specs[0]
    specs = (TensorSpec(**{**spec.__dict__, **changes}),) + b.specs[1:]
    return Bundle(specs, b.payload, b.compression, b.raw_size, b.digest)


@pytest.mark.parametrize("changes,reason", [
    ({"dtype": "complex64"}, "unknown dtype"),
    ({"encoding": "bf16"}, "unknown encoding"),
    ({"shape": (999,)}, "needs"),
    ({"offset": 10**9}, "outside"),
    ({"name": ""}, "empty name"),
])
def test_forged_specs_rejected(changes, reason):
    b = pack({"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)})
    with pytest.raises(CodecError, match=reason):
        unpack(_forge(b, **changes))


def test_overlapping_tensors_rejected():
    b = pack({"x": np.ones(4, np.float32), "y": np.ones(4, np.float32)}, compress=False)
    specs = (b.specs[0], TensorSpec(**{**b.specs[1].__dict__, "offset": 8}))
    raw = b.payload + bytes(8)
    with pytest.raises(CodecError, match="overlap"):
        unpack(Bundle(specs, raw, "none", len(raw), digest(raw)))


def test_unknown_dtype_on_pack():
    with pytest.raises(CodecError, match="not supported"):
        pack({"x": np.zeros(2, np.complex64)})
    with pytest.raises(CodecError, match="encoding"):
        pack({"x": np.zeros(2)}, encoding="fp8")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    x = np.ones(4, np.float32)
    x[2] = bad
    with pytest.raises(CodecError, match="NaN or Inf"):
        unpack(pack({"x": x}))
    with pytest.raises(CodecError, match="NaN or Inf"):
        pack({"x": x}, encoding="fp16")
    assert not np.isfinite(unpack(pack({"x": x}), allow_nonfinite=True)["x"][2])


def test_templates_enforce_structure():
    b = pack({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)})
    assert set(unpack(b, templates={"a": (3,), "b": (2,)})) == {"a", "b"}
    with pytest.raises(CodecError, match="missing"):
        unpack(b, templates={"a": (3,), "b": (2,), "c": (1,)})
    with pytest.raises(CodecError, match="expects"):
        unpack(b, templates={"a": (4,), "b": (2,)})


def test_decoded_arrays_are_writable_copies(rng):
    out = unpack(pack(_sample(rng)))
    out["conv.weight"][...] = 0  # must not raise (read-only buffer) nor touch the bundle
    assert out["conv.weight"].flags.writeable


def test_signing_bytes_cover_every_decision_field():
    base = dict(target_edge="e1", update_id="u", version=3, base_version=2, kind=0, submodel_spec="{}",
                bundle_digest="ab")
    ref = signing_bytes(**base)
    for key, value in [("target_edge", "e2"), ("version", 4), ("base_version", 1), ("kind", 2),
                       ("submodel_spec", "[]"), ("bundle_digest", "cd"), ("update_id", "v")]:
        assert signing_bytes(**{**base, key: value}) != ref
