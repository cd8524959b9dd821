import numpy as np
import pytest

from eclm_ros.sim.corruptions import CORRUPTIONS, UnknownCorruptionError, corrupt
from eclm_ros.sim.data import load_fashion_mnist

IMAGES = load_fashion_mnist("test")[0][:40]


def _mad(name: str, severity: int) -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([np.abs(corrupt(i, name, severity, rng).astype(float) - i).mean() for i in IMAGES]))


def _repeated_lines(name: str, severity: int) -> float:
    """Share of rows/columns equal to their neighbour: how coarse a pixelated image is."""
    rng = np.random.default_rng(0)
    outs = [corrupt(i, name, severity, rng) for i in IMAGES]
    return float(np.mean([(np.all(o[1:] == o[:-1], 1).mean() + np.all(o[:, 1:] == o[:, :-1], 0).mean()) / 2
                          for o in outs]))


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_changes_image_and_is_deterministic(name):
    img = IMAGES[0]
    a = corrupt(img, name, 3, np.random.default_rng(5))
    b = corrupt(img, name, 3, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - img).mean() > 0.5


@pytest.mark.parametrize("name", [c for c in CORRUPTIONS if c != "pixelate"])
def test_severity_is_monotone(name):
    mads = [_mad(name, s) for s in range(1, 6)]
    assert all(a <= b for a, b in zip(mads, mads[1:])), mads


def test_pixelate_gets_coarser():
    coarse = [_repeated_lines("pixelate", s) for s in range(1, 6)]
    assert all(a < b for a, b in zip(coarse, coarse[1:])), coarse


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_any_size_and_rgb(name):
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert corrupt(img, name, 5, np.random.default_rng(0)).shape == img.shape


def test_bad_arguments():
    with pytest.raises(UnknownCorruptionError, match="unknown corruption"):
        corrupt(IMAGES[0], "rain", 3, np.random.default_rng(0))
    with pytest.raises(UnknownCorruptionError, match="1..5"):
        corrupt(IMAGES[0], "fog", 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES[0].astype(np.float32), "fog", 3, np.random.default_rng(0))
