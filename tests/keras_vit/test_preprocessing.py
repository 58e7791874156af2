"""keras_vit.preprocess_image / decode_image on untrusted bytes: formats, the pixel limit
read from each format's header, GIF first frame, DCT scaling, finite pixels."""
import io
import struct
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_vit import preprocess_image
from keras_vit import preprocessing
from keras_vit.preprocessing import decode_image
from tests.conftest import random_images


def _encode(array, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


IMAGE = random_images(1, 30, 40, seed=3)[0].astype(np.uint8)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
def test_listed_formats_decode_as_tensorflow_does(fmt):
    data = _encode(IMAGE, fmt)
    want = tf.io.decode_image(data, channels=3, expand_animations=False)
    np.testing.assert_array_equal(decode_image(tf.constant(data)), want)
    traced = tf.function(lambda d: decode_image(d, max_pixels=1200))
    np.testing.assert_array_equal(traced(tf.constant(data)), want)  # exactly 1200 pixels


@pytest.mark.parametrize("fmt,kind", [("JPEG", "JPEG"), ("PNG", "PNG"), ("BMP", "BMP"),
                                      ("GIF", "GIF")])
def test_pixel_limit_names_size_format_and_index(fmt, kind):
    data = tf.constant(_encode(IMAGE, fmt))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=f"image 4: 40x30 {kind} is 1200 pixels, over the limit of 1199 "
                             r"pixels \(max_pixels\)"):
        decode_image(data, max_pixels=1199, index=4)


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "ICO"])
def test_formats_not_listed_are_refused(fmt):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"unsupported image format \(allowed: JPEG, PNG, GIF, BMP\)"):
        decode_image(tf.constant(_encode(IMAGE, fmt)))


def test_bmp_header_sizes_top_down_included():
    data = bytearray(_encode(IMAGE, "BMP"))
    data[18:26] = struct.pack("<ii", 20000, -20000)  # a top-down bitmap declares height < 0
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="20000x20000 BMP is 400000000 pixels, over the limit"):
        decode_image(tf.constant(bytes(data)))


def test_gif_frame_larger_than_its_canvas_is_checked():
    data = _encode(IMAGE, "GIF")
    start = data.index(b"\x2c\x00\x00\x00\x00" + struct.pack("<HH", 40, 30))
    data = data[:start + 5] + struct.pack("<HH", 20000, 20000) + data[start + 9:]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="20000x20000 GIF frame is 400000000 pixels, over the limit"):
        decode_image(tf.constant(data))


def test_gif_is_decoded_to_its_first_frame_only():
    frames = [Image.fromarray(random_images(1, 30, 40, seed)[0].astype(np.uint8))
              for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    data = buffer.getvalue()
    np.testing.assert_array_equal(decode_image(tf.constant(data)), tf.io.decode_gif(data)[0])
    first = data.index(b"\x2c\x00\x00\x00\x00" + struct.pack("<HH", 40, 30))
    with pytest.raises(tf.errors.InvalidArgumentError, match="corrupt or truncated GIF"):
        decode_image(tf.constant(data[:first + 30]))  # cut inside the first frame


def _with_comment(data, sub_blocks):
    """``data`` (a GIF) with a comment extension of one-byte sub-blocks before its image."""
    start = data.index(b"\x2c\x00\x00\x00\x00")
    return data[:start] + b"\x21\xfe" + b"\x01x" * sub_blocks + b"\x00" + data[start:]


def test_gif_of_many_tiny_blocks_costs_milliseconds_not_one_loop_step_a_block():
    """200,000 one-byte sub-blocks before the first frame (400 KB): the block walk of the
    served graph took one loop step a block (~85 us each on a loaded machine, and refused
    the GIF past 65,536 blocks); it follows them with vector ops now."""
    data = _with_comment(_encode(IMAGE, "GIF"), 200_000)
    decode = tf.function(decode_image)
    decode(tf.constant(_encode(IMAGE, "GIF")))  # traced once, before the clock starts
    start = time.process_time()
    image = decode(tf.constant(data))
    seconds = time.process_time() - start
    np.testing.assert_array_equal(image, tf.io.decode_gif(data)[0])
    assert seconds < 1.0, f"{seconds:.2f} s of CPU for one GIF"


def test_gif_whose_first_frame_ends_past_the_limit_is_refused(monkeypatch):
    """Followed 64 bytes at a time (many windows), the limit 1024 bytes."""
    monkeypatch.setattr(preprocessing, "_GIF_WINDOW", 64)
    monkeypatch.setattr(preprocessing, "MAX_GIF_FRAME_END", 1024)
    small = _with_comment(_encode(IMAGE[:4, :4], "GIF"), 100)
    assert 64 * 4 < len(small) < 1024
    np.testing.assert_array_equal(decode_image(tf.constant(small)), tf.io.decode_gif(small)[0])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="its first frame does not end within its first 1024 bytes"):
        decode_image(tf.constant(_with_comment(_encode(IMAGE[:4, :4], "GIF"), 600)))


@pytest.mark.parametrize("window", [5, 64, 2 ** 16])
def test_gif_blocks_are_followed_across_windows(monkeypatch, window):
    """Extensions with sub-blocks of every size before an animated GIF's first frame: its
    first frame, whatever window the blocks are followed in."""
    monkeypatch.setattr(preprocessing, "_GIF_WINDOW", window)
    frames = [Image.fromarray(random_images(1, 30, 40, seed)[0].astype(np.uint8))
              for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], comment=b"c" * 600)
    data = buffer.getvalue()
    sizes = np.random.default_rng(0).integers(1, 256, 40)
    blocks = b"".join(bytes([size]) + b"\x2c" * size for size in sizes)
    start = data.index(b"\x2c\x00\x00\x00\x00" + struct.pack("<HH", 40, 30))
    data = data[:start] + b"\x21\xfe" + blocks + b"\x00\x21\xfe\x01x\x00" + data[start:]
    np.testing.assert_array_equal(decode_image(tf.constant(data)), tf.io.decode_gif(data)[0])


@pytest.mark.parametrize("size,ratio", [((300, 400), 8), ((100, 300), 2), ((63, 90), 1)])
def test_jpeg_dct_scaling_never_below_the_model_resolution(size, ratio):
    data = tf.io.encode_jpeg(random_images(1, *size, seed=1)[0].astype(np.uint8))
    scaled = tf.io.decode_jpeg(data, ratio=ratio)
    assert min(scaled.shape[0] / 32, scaled.shape[1] / 32) >= 1
    np.testing.assert_array_equal(preprocess_image(data, 32), tf.image.resize(scaled, (32, 32)))


def test_uint8_pixels_resize_like_their_float32_copy():
    image = IMAGE
    np.testing.assert_array_equal(preprocess_image(tf.constant(image), (16, 24)),
                                  tf.image.resize(tf.cast(image, tf.float32), (16, 24)))


def test_non_finite_pixels_are_refused():
    image = np.full((8, 8, 3), 10.0, np.float32)
    image[1, 2, 0] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="image 0: non-finite pixel"):
        preprocess_image(tf.constant(image), 8, index=0)
