import cv2
import numpy as np
import pytest

from eclm_ros.sim.corruptions import CORRUPTIONS, WORLDS, UnknownCorruptionError, corrupt
from eclm_ros.sim.data import load_fashion_mnist

IMAGES = load_fashion_mnist("test")[0][:40]


def _mad(name: str, severity: int, world: str = "mild") -> float:
    rng = np.random.default_rng(0)
    return float(np.mean([np.abs(corrupt(i, name, severity, rng, world).astype(float) - i).mean() for i in IMAGES]))


def _repeated_lines(name: str, severity: int, world: str = "mild") -> float:
    """Share of rows/columns equal to their neighbour: how coarse a pixelated image is."""
    rng = np.random.default_rng(0)
    outs = [corrupt(i, name, severity, rng, world) for i in IMAGES]
    return float(np.mean([(np.all(o[1:] == o[:-1], 1).mean() + np.all(o[:, 1:] == o[:, :-1], 0).mean()) / 2
                          for o in outs]))


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 and len(set(CORRUPTIONS)) == 15


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_changes_image_and_is_deterministic(name, world):
    img = IMAGES[0]
    a = corrupt(img, name, 3, np.random.default_rng(5), world)
    b = corrupt(img, name, 3, np.random.default_rng(5), world)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - img).mean() > 0.5


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", [c for c in CORRUPTIONS if c != "pixelate"])
def test_severity_is_monotone(name, world):
    mads = [_mad(name, s, world) for s in range(1, 6)]
    assert all(a <= b for a, b in zip(mads, mads[1:])), mads


@pytest.mark.parametrize("world", WORLDS)
def test_pixelate_gets_coarser(world):
    coarse = [_repeated_lines("pixelate", s, world) for s in range(1, 6)]
    assert all(a < b for a, b in zip(coarse, coarse[1:])), coarse


# ImageNet-C's intensities are far stronger than CIFAR-C's; its blurs, scaled from 224 px, are not (by design)
INTENSITIES = ("gaussian_noise", "shot_noise", "impulse_noise", "snow", "frost", "fog", "brightness",
               "jpeg_compression")


@pytest.mark.parametrize("name", INTENSITIES)
def test_the_harsh_world_corrupts_far_more_than_the_mild_one(name):
    for severity in (3, 5):
        assert _mad(name, severity, "harsh") > 1.2 * _mad(name, severity, "mild"), (name, severity)


def test_harsh_contrast_leaves_a_fraction_of_the_mild_one():
    def spread(world: str) -> float:
        return float(np.mean([corrupt(i, "contrast", 5, np.random.default_rng(0), world).std() for i in IMAGES]))
    assert spread("harsh") < 0.5 * spread("mild")


def test_harsh_spatial_parameters_scale_with_the_frame():
    """A harsh defocus blur is a few pixels wide on a 224 px frame and well under one on 28 px: radii are given
    at 224 px and scaled, so the blur looks alike at any size."""
    big = cv2.resize(IMAGES[0], (224, 224), interpolation=cv2.INTER_LINEAR)
    small_change = np.abs(corrupt(IMAGES[0], "defocus_blur", 5, np.random.default_rng(0), "harsh").astype(float)
                          - IMAGES[0]).mean()
    blurred = cv2.resize(corrupt(big, "defocus_blur", 5, np.random.default_rng(0), "harsh"), (28, 28),
                         interpolation=cv2.INTER_AREA)
    big_change = np.abs(blurred.astype(float) - cv2.resize(big, (28, 28), interpolation=cv2.INTER_AREA)).mean()
    assert 0.4 < big_change / small_change < 2.5, (small_change, big_change)


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_any_size_and_rgb(name, world):
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    assert corrupt(img, name, 5, np.random.default_rng(0), world).shape == img.shape


def test_bad_arguments():
    with pytest.raises(UnknownCorruptionError, match="unknown corruption"):
        corrupt(IMAGES[0], "rain", 3, np.random.default_rng(0))
    with pytest.raises(UnknownCorruptionError, match="unknown world"):
        corrupt(IMAGES[0], "fog", 3, np.random.default_rng(0), "arctic")
    with pytest.raises(UnknownCorruptionError, match="1..5"):
        corrupt(IMAGES[0], "fog", 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        corrupt(IMAGES[0].astype(np.float32), "fog", 3, np.random.default_rng(0))
