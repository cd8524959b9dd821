"""Camera messages to frames (ros_io.frame_from_msg): every raw encoding a camera driver publishes, jpeg/png
CompressedImage, and the reason a frame is refused. Pure conversion: no nodes, no DDS."""
import cv2
import numpy as np
import pytest

from node_processes import ros_available

pytestmark = pytest.mark.skipif(ros_available() is not None, reason=str(ros_available()))

H, W = 6, 8


def _rgb(frame: np.ndarray, order: str) -> np.ndarray:
    """What the model sees, in RGB, whatever order the conversion reports."""
    return frame if frame.ndim == 2 or order == "rgb" else frame[..., ::-1]


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _image(encoding: str, data: bytes, step: int, width: int = W, height: int = H, bigendian: int = 0):
    from sensor_msgs.msg import Image

    return Image(height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step, data=data)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_come_out_as_the_same_rgb(rgb, encoding):
    from eclm_ros.ros.ros_io import frame_from_msg

    px = rgb if encoding.startswith("rgb") else rgb[..., ::-1]
    if encoding.endswith("a8"):
        px = np.concatenate([px, np.full((H, W, 1), 77, np.uint8)], axis=2)  # alpha must not leak in
    frame, order = frame_from_msg(_image(encoding, np.ascontiguousarray(px).tobytes(), W * px.shape[2]))
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(_rgb(frame, order), rgb)


def test_mono8_with_row_padding_is_a_zero_copy_view():
    from eclm_ros.ros.ros_io import frame_from_msg

    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    padded = np.zeros((H, W + 4), np.uint8)
    padded[:, :W] = gray
    msg = _image("mono8", padded.tobytes(), W + 4)
    frame, _ = frame_from_msg(msg)
    np.testing.assert_array_equal(frame, gray)
    assert not frame.flags.owndata  # a view on the message's buffer, not a copy


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("bigendian", [0, 1])
def test_16_bit_encodings_are_scaled_to_8_bit_over_the_full_range(encoding, bigendian):
    from eclm_ros.ros.ros_io import frame_from_msg

    values = np.linspace(0, 65535, H * W).astype(np.uint16).reshape(H, W)
    data = values.astype(">u2" if bigendian else "<u2").tobytes()
    frame, _ = frame_from_msg(_image(encoding, data, W * 2, bigendian=bigendian))
    assert frame.dtype == np.uint8 and frame.shape == (H, W)
    assert frame[0, 0] == 0 and frame[-1, -1] == 255
    np.testing.assert_allclose(frame, values / 257.0, atol=0.51)


def _yuv422(y: np.ndarray, u: np.ndarray, v: np.ndarray, layout: str) -> bytes:
    """Pack full-resolution Y and per-pixel-pair U, V as UYVY (ROS yuv422) or YUYV (yuv422_yuy2)."""
    y0, y1 = y[:, 0::2], y[:, 1::2]
    planes = (u, y0, v, y1) if layout == "uyvy" else (y0, u, y1, v)
    return np.stack(planes, axis=-1).astype(np.uint8).tobytes()


def _bt601(y, u, v) -> np.ndarray:
    """Video-range BT.601 YUV to RGB, the reference the conversion must match within rounding."""
    y, u, v = (np.asarray(a, np.float64) for a in (y, u, v))
    c = 1.164 * (y - 16)
    rgb = np.stack([c + 1.596 * (v - 128), c - 0.813 * (v - 128) - 0.391 * (u - 128), c + 2.018 * (u - 128)], -1)
    return np.clip(rgb, 0, 255)


@pytest.mark.parametrize("encoding,layout", [("yuv422", "uyvy"), ("yuv422_yuy2", "yuyv")])
def test_yuv422_is_converted_to_rgb(encoding, layout):
    from eclm_ros.ros.ros_io import frame_from_msg

    rng = np.random.default_rng(2)
    y = rng.integers(16, 236, (H, W))
    u, v = rng.integers(60, 196, (H, W // 2)), rng.integers(60, 196, (H, W // 2))
    frame, order = frame_from_msg(_image(encoding, _yuv422(y, u, v, layout), W * 2))
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    expected = _bt601(y, np.repeat(u, 2, axis=1), np.repeat(v, 2, axis=1))
    assert np.abs(_rgb(frame, order).astype(np.float64) - expected).max() <= 3


def _compressed(data: bytes, fmt: str):
    from sensor_msgs.msg import CompressedImage

    return CompressedImage(format=fmt, data=data)


def test_png_compressed_image_decodes_losslessly(rgb):
    from eclm_ros.ros.ros_io import frame_from_msg

    ok, png = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # image_transport compresses bgr8
    frame, order = frame_from_msg(_compressed(png.tobytes(), "rgb8; png compressed bgr8"))
    np.testing.assert_array_equal(_rgb(frame, order), rgb)


def test_jpeg_compressed_image_decodes_close_to_the_original():
    from eclm_ros.ros.ros_io import frame_from_msg

    smooth = np.zeros((32, 48, 3), np.uint8)  # jpeg is lossy: a smooth picture with distinct channels
    smooth[..., 0] = np.linspace(40, 220, 48).astype(np.uint8)  # R ramps left to right
    smooth[..., 1] = 90
    smooth[..., 2] = np.linspace(200, 30, 32).astype(np.uint8)[:, None]  # B ramps top to bottom
    ok, jpg = cv2.imencode(".jpg", np.ascontiguousarray(smooth[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    frame, order = frame_from_msg(_compressed(jpg.tobytes(), "jpeg"))
    assert frame.shape == smooth.shape
    assert np.abs(_rgb(frame, order).astype(int) - smooth).mean() < 4


def test_png_with_alpha_and_16_bit_png_become_8_bit_frames(rgb):
    from eclm_ros.ros.ros_io import frame_from_msg

    bgra = np.concatenate([rgb[..., ::-1], np.full((H, W, 1), 9, np.uint8)], axis=2)
    frame, order = frame_from_msg(_compressed(cv2.imencode(".png", bgra)[1].tobytes(), "bgra8; png compressed"))
    np.testing.assert_array_equal(_rgb(frame, order), rgb)
    deep = np.full((H, W), 65535, np.uint16)
    frame, _ = frame_from_msg(_compressed(cv2.imencode(".png", deep)[1].tobytes(), "mono16; png compressed"))
    assert frame.dtype == np.uint8 and (frame == 255).all()


@pytest.mark.parametrize("make,reason", [
    (lambda: _image("32FC1", b"\0" * H * W * 4, W * 4), "unsupported encoding '32FC1'"),
    (lambda: _image("rgb8", b"\0" * 10, W * 3), "data holds 10 bytes"),
    (lambda: _image("rgb8", b"", W * 3, width=0), "empty image"),
    (lambda: _image("bgr8", b"\0" * H * W * 3, W * 2), "step 16 is shorter than a row"),
    (lambda: _image("mono16", b"\0" * H * (W * 2 + 1), W * 2 + 1), "not a multiple of the 2-byte"),
    (lambda: _image("yuv422", b"\0" * H * 14, 14, width=7), "even width"),
    (lambda: _compressed(b"", "jpeg"), "empty CompressedImage"),
    (lambda: _compressed(b"not a jpeg at all", "jpeg"), "format 'jpeg': not a PNG or JPEG image"),
    (lambda: _compressed(cv2.imencode(".jpg", np.zeros((H, W), np.uint8))[1].tobytes()[:200], "jpeg"),
     "do not decode as the 8x6 PNG/JPEG"),
    (lambda: _compressed(b"\xff\xd8\xff\xc0\x00\x11\x08\xff\xff\xff\xff" + bytes(300), "jpeg"),
     "65535x65535 pixels refused"),  # a forged frame header: 4 G pixels
    (lambda: _compressed(b"\0" * 40, "16UC1; compressedDepth png"), "compressedDepth is not supported"),
])
def test_a_frame_that_cannot_be_one_is_refused_with_the_reason(make, reason):
    from eclm_ros.ros.ros_io import ImageError, frame_from_msg

    with pytest.raises(ImageError, match=reason.replace("(", r"\(")) as info:
        frame_from_msg(make())
    assert isinstance(info.value, ValueError)  # the node counts ValueErrors as rejected frames


@pytest.mark.parametrize("encoding,shape,dtype", [("mono8", (H, W), np.uint8), ("bgra8", (H, W, 4), np.uint8),
                                                  ("16UC1", (H, W), np.uint16)])
def test_numpy_to_image_round_trips(encoding, shape, dtype):
    from eclm_ros.ros.ros_io import _raw_pixels, numpy_to_image

    arr = np.random.default_rng(3).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    msg = numpy_to_image(arr, encoding)
    assert msg.step == W * (shape[2] if len(shape) == 3 else 1) * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(_raw_pixels(msg), arr)
