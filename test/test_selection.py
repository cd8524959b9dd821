import math

import numpy as np
import pytest

from eclm_ros.core.selection import Selector, decode_frames, encode_frames, entropy


def _probs(rng, n, sharp):
    logits = rng.standard_normal((n, 10)) * sharp
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def test_drops_unreliable_and_uninformative():
    sel = Selector(10, target_ratio=0, dynamic=False, e_min_factor=0.05)
    uniform = np.full((1, 10), 0.1)  # entropy ln 10: unreliable
    onehot = np.eye(10)[:1] * 0.999 + 0.0001  # entropy ~0: nothing to learn
    middle = np.array([[0.7, 0.2, 0.1] + [0.0] * 7])  # E = 0.80 < 0.4 ln 10 = 0.92
    mask = sel.select(np.concatenate([uniform, onehot, middle]))
    assert mask.tolist() == [False, False, True]


def test_drops_redundant_frames():
    sel = Selector(10, target_ratio=0, dynamic=False, redundancy_eps=0.9)
    p = np.array([[0.7, 0.2, 0.1] + [0.0] * 7])
    assert sel.select(p).all()
    assert not sel.select(p).any()  # the same prediction again: the cloud has it
    other = np.array([[0.0] * 7 + [0.1, 0.2, 0.7]])
    assert sel.select(other).all()


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.4])
def test_meets_the_upload_budget(ratio):
    rng = np.random.default_rng(0)
    sel = Selector(10, target_ratio=ratio)
    for _ in range(200):
        sel.select(_probs(rng, 64, sharp=3.0))
    assert sel.upload_ratio <= ratio + 0.01
    assert sel.upload_ratio >= 0.5 * ratio  # and uses what it is given when enough frames qualify


def test_max_frames_cap_and_validation():
    rng = np.random.default_rng(1)
    sel = Selector(10, target_ratio=0, dynamic=False, e_min_factor=0.0)
    assert sel.select(_probs(rng, 64, 3.0), max_frames=3).sum() <= 3
    with pytest.raises(ValueError, match="probabilities"):
        sel.select(np.ones((4, 3)))


def test_entropy_and_codec_round_trip():
    assert math.isclose(entropy(np.full((1, 10), 0.1))[0], math.log(10), rel_tol=1e-6)
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    np.testing.assert_array_equal(np.stack(decode_frames(encode_frames(imgs))), imgs)  # PNG is lossless
    jpeg = np.stack(decode_frames(encode_frames(imgs, "jpeg", quality=90)))
    assert jpeg.shape == imgs.shape and np.abs(jpeg.astype(int) - imgs).mean() < 40
    with pytest.raises(ValueError, match="frame 0: not a PNG or JPEG"):
        decode_frames([b"junk"])
    png = encode_frames(imgs[:1])[0]
    with pytest.raises(ValueError, match="PNG chunk at byte 33 claims"):  # truncated
        decode_frames([png[:60]])
    with pytest.raises(ValueError, match="do not decode as the 28x28"):  # the pixel data (IDAT) zeroed
        decode_frames([png[:41] + bytes(len(png) - 57) + png[-16:]])
    forged = png[:16] + (5000).to_bytes(4, "big") * 2 + png[24:]  # a 5000x5000 header: 25 M pixels
    with pytest.raises(ValueError, match="5000x5000 pixels refused"):
        decode_frames([forged])


@pytest.mark.parametrize("per_frame", [False, True])
def test_a_severe_shift_does_not_silence_the_uploads(per_frame):
    """Every frame above CEMA's E_max (the edge is lost): the controller raises E_max until the budget is used,
    and falls back to CEMA's threshold once confident frames return."""
    rng = np.random.default_rng(0)
    sel = Selector(10, target_ratio=0.2)
    lost = _probs(rng, 2000, sharp=0.4)  # entropy ~2.2 nats, far above 0.4 ln 10 = 0.92
    assert (entropy(lost) > sel.e_max * 1.6).all()
    for i in range(0, 2000, 10):
        if per_frame:
            [sel.select_one(p) for p in lost[i:i + 10]]
        else:
            sel.select(lost[i:i + 10])
    assert sel.upload_ratio >= 0.1 and sel.e_max_boost > 0
    for _ in range(100):
        sel.select(_probs(rng, 50, sharp=3.0))
    assert sel.e_max_boost < 0.2
