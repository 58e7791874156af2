"""The one image preprocessing function of the project.

Training, evaluation, prediction and the TF Serving export all call
:func:`preprocess_image`, so what the server does to an image is what training did. It
decodes (when given bytes) to 3 channels and resizes to the model's resolution with
``tf.image.resize`` (bilinear, no antialias, as the original input pipeline). It does not
rescale: keras_vit models rescale [0, 255] -> [-1, 1] in their first layer.

Encoded bytes are untrusted input (a serving endpoint decodes whatever it is sent), so
:func:`decode_image` reads the image's size from its header first and refuses, before any
decoding, an image over ``max_pixels`` or a format other than JPEG, PNG, GIF and BMP. Only
stock TensorFlow ops are used, so the checks run inside an exported serving graph.
"""
from __future__ import annotations

import re

import tensorflow as tf

from keras_vit.position_embeddings import to_pair

# 25 megapixels: a 6000x4000 photo. Decoding one image at the limit measured +76 MB for a
# PNG (3 bytes a pixel) and +153 MB for a progressive 4:4:4 JPEG (libjpeg holds every DCT
# coefficient), under the 200 MB a request may cost a server.
DEFAULT_MAX_PIXELS = 25_000_000
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# A GIF's first frame is found by walking its blocks; more blocks than this (16 MB of image
# data in 255-byte blocks) before the first frame ends is refused, which bounds the walk.
MAX_GIF_BLOCKS = 65_536
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", (b"GIF87a", b"GIF89a"), b"BM")
_HEADER_PAD = b"\0" * 32  # header fields are read from the padded bytes: never out of range


def _message(index, text, *values):
    """``text`` with ``{}`` filled from ``values``, prefixed by ``image <index>: ``."""
    if index is not None:
        text, values = "image {}: " + text, (index,) + values
    return tf.strings.format(text, values) if values else tf.constant(text)


def _check(condition, index, text, *values):
    """An assertion (InvalidArgumentError with the formatted message) on ``condition``."""
    return tf.debugging.Assert(condition, [_message(index, text, *values)])


def _unsigned(data, offset, size, big_endian=False):
    """The unsigned integer of ``size`` bytes at ``offset`` of ``data`` (int64)."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8), tf.int64)
    weights = [256 ** i for i in range(size)]
    return tf.reduce_sum(raw * tf.constant(weights[::-1] if big_endian else weights, tf.int64))


def _format_index(data):
    """0..3 for JPEG, PNG, GIF, BMP (by their magic bytes), 4 for anything else."""
    def starts(magic):
        return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)

    found = [starts(_MAGIC[0]), starts(_MAGIC[1]),
             tf.logical_or(starts(_MAGIC[2][0]), starts(_MAGIC[2][1])), starts(_MAGIC[3])]
    return tf.reduce_min(tf.where(tf.stack(found), tf.range(4), 4))


def _pixel_check(height, width, kind, max_pixels, index):
    pixels = tf.cast(height, tf.int64) * tf.cast(width, tf.int64)
    return _check(pixels <= max_pixels, index,
                  "{}x{} " + kind + " is {} pixels, over the limit of " + str(max_pixels) +
                  " pixels (max_pixels)", width, height, pixels)


def _jpeg_ratio_decoders(data, channels, min_size):
    """DCT down-scaling (libjpeg's ``scale_denom``): decode at 1/8, 1/4 or 1/2 of the size
    when that still covers ``min_size`` (the model's input), else at full size."""
    ratios = (1,) if min_size is None else (1, 2, 4, 8)
    return [lambda r=r: tf.io.decode_jpeg(data, channels=channels, ratio=r) for r in ratios]


def _decode_jpeg(data, channels, max_pixels, min_size, index):
    shape = tf.image.extract_jpeg_shape(data)
    height, width = shape[0], shape[1]
    with tf.control_dependencies([_pixel_check(height, width, "JPEG", max_pixels, index)]):
        if min_size is None:
            return tf.io.decode_jpeg(data, channels=channels)
        fits = [tf.logical_and(height // r >= min_size[0], width // r >= min_size[1])
                for r in (2, 4, 8)]
        branch = tf.reduce_sum(tf.cast(tf.stack(fits), tf.int32))  # fits are nested
        return tf.switch_case(branch, _jpeg_ratio_decoders(data, channels, min_size))


def _decode_png(data, channels, max_pixels, index):
    padded = data + _HEADER_PAD
    ihdr = tf.equal(tf.strings.substr(padded, 12, 4), b"IHDR")
    width, height = _unsigned(padded, 16, 4, True), _unsigned(padded, 20, 4, True)
    checks = [_check(ihdr, index, "corrupt PNG: no IHDR header"),
              _pixel_check(height, width, "PNG", max_pixels, index)]
    with tf.control_dependencies(checks):
        return tf.io.decode_png(data, channels=channels)


def _decode_bmp(data, channels, max_pixels, index):
    padded = data + _HEADER_PAD
    width = _unsigned(padded, 18, 4)
    height = _unsigned(padded, 22, 4)
    height = tf.abs(tf.where(height >= 2 ** 31, height - 2 ** 32, height))  # top-down: < 0
    width = tf.where(width >= 2 ** 31, 2 ** 32 - width, width)
    with tf.control_dependencies([_pixel_check(height, width, "BMP", max_pixels, index)]):
        return tf.io.decode_bmp(data, channels=channels)


def _gif_first_frame_end(data):
    """Walks the GIF's blocks to the end of its first image.

    Returns (end offset, first frame width, height, ok). ``ok`` is false for a truncated or
    corrupt GIF, or one with more than :data:`MAX_GIF_BLOCKS` blocks before that point.
    """
    length = tf.cast(tf.strings.length(data), tf.int64)
    padded = data + _HEADER_PAD
    flags = _unsigned(padded, 10, 1)
    color_table = tf.where(flags >= 128, 3 * tf.bitwise.left_shift(
        tf.constant(2, tf.int64), flags % 8), tf.constant(0, tf.int64))
    # mode: 0 expects a block, 1 reads an extension's sub-blocks, 2 the image's, 3 done
    # (the first image ends), 4 corrupt.
    def body(position, mode, frame_width, frame_height, steps):
        window = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, position, 10), tf.uint8),
                         tf.int64)
        byte = window[0]
        image_flags = window[9]
        local_table = tf.where(image_flags >= 128, 3 * tf.bitwise.left_shift(
            tf.constant(2, tf.int64), image_flags % 8), tf.constant(0, tf.int64))
        is_extension, is_image = tf.equal(byte, 0x21), tf.equal(byte, 0x2C)
        at_block = tf.equal(mode, 0)
        block_position = tf.where(is_extension, position + 2, position + 11 + local_table)
        block_mode = tf.where(is_extension, tf.constant(1, tf.int64),
                              tf.where(is_image, tf.constant(2, tf.int64), 4))
        sub_position = position + 1 + byte
        sub_mode = tf.where(tf.equal(byte, 0),
                            tf.where(tf.equal(mode, 1), tf.constant(0, tf.int64), 3), mode)
        starts_image = tf.logical_and(at_block, is_image)
        return (tf.where(at_block, block_position, sub_position),
                tf.where(at_block, block_mode, sub_mode),
                tf.where(starts_image, window[5] + 256 * window[6], frame_width),
                tf.where(starts_image, window[7] + 256 * window[8], frame_height),
                steps + 1)

    def more(position, mode, frame_width, frame_height, steps):
        return tf.logical_and(tf.logical_and(mode < 3, position < length), steps < MAX_GIF_BLOCKS)

    zero = tf.constant(0, tf.int64)
    position, mode, frame_width, frame_height, _ = tf.while_loop(
        more, body, (13 + color_table, zero, zero, zero, zero), parallel_iterations=1)
    return position, frame_width, frame_height, tf.logical_and(tf.equal(mode, 3),
                                                               position <= length)


def _decode_gif(data, channels, max_pixels, index):
    """The first frame only. ``tf.io.decode_gif`` decodes every frame, so the bytes are cut
    after the first image (and closed with the GIF trailer) before decoding."""
    padded = data + _HEADER_PAD
    width, height = _unsigned(padded, 6, 2), _unsigned(padded, 8, 2)
    end, frame_width, frame_height, ok = _gif_first_frame_end(data)
    checks = [_pixel_check(height, width, "GIF", max_pixels, index),
              _pixel_check(frame_height, frame_width, "GIF frame", max_pixels, index),
              _check(ok, index, "corrupt or truncated GIF, or over " + str(MAX_GIF_BLOCKS) +
                     " blocks before its first frame ends")]
    with tf.control_dependencies(checks):
        first = tf.strings.substr(data, 0, tf.cast(end, tf.int32)) + b";"
        image = tf.io.decode_gif(first)[0]
    return tf.image.rgb_to_grayscale(image) if channels == 1 else image


def decode_image(image_bytes: tf.Tensor, channels: int = 3,
                 max_pixels: int = DEFAULT_MAX_PIXELS, min_size=None, index=None) -> tf.Tensor:
    """JPEG/PNG/GIF (first frame)/BMP bytes to a (H, W, channels) uint8 tensor.

    The size is read from the header and an image over ``max_pixels`` pixels is refused
    before it is decoded, as is any other format (WebP, JPEG XL, ...): a small file cannot
    make the caller decode gigabytes. With ``min_size`` (height, width) a large JPEG is
    decoded at 1/2, 1/4 or 1/8 scale (DCT down-scaling) as long as it stays at least that
    size. Empty, corrupt, refused or over-limit bytes fail with ``InvalidArgumentError``
    naming the problem (and ``image <index>`` when ``index`` is given).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    min_size = None if min_size is None else to_pair(min_size, "min_size")
    length = tf.strings.length(image_bytes)
    empty = _check(length > 0, index, "empty image: the request carried no image bytes")
    with tf.control_dependencies([empty]):
        kind = _format_index(image_bytes)

    def refuse():
        check = _check(False, index, "unsupported image format (allowed: " +
                       ", ".join(FORMATS) + ")")
        with tf.control_dependencies([check]):
            return tf.zeros([0, 0, channels], tf.uint8)

    branches = [lambda: _decode_jpeg(image_bytes, channels, max_pixels, min_size, index),
                lambda: _decode_png(image_bytes, channels, max_pixels, index),
                lambda: _decode_gif(image_bytes, channels, max_pixels, index),
                lambda: _decode_bmp(image_bytes, channels, max_pixels, index),
                refuse]
    image = tf.switch_case(kind, branches)
    return tf.ensure_shape(image, (None, None, channels))


def _check_finite(image, index):
    finite = tf.reduce_all(tf.math.is_finite(image))
    with tf.control_dependencies([_check(finite, index, "non-finite pixel values (NaN or inf)")]):
        return tf.identity(image)


def preprocess_image(image: tf.Tensor, image_size, channels: int = 3,
                     max_pixels: int = DEFAULT_MAX_PIXELS, index=None) -> tf.Tensor:
    """Encoded bytes or a (H, W, C) image -> float32 (h, w, channels) pixels in [0, 255].

    ``image_size`` is the model's resolution (int or (height, width)). Bytes go through
    :func:`decode_image` (``max_pixels``, formats, DCT down-scaling of large JPEGs to no less
    than ``image_size``); float pixels must be finite. ``index`` (the image's place in its
    batch) is named in error messages.
    """
    height, width = to_pair(image_size, "image_size")
    if image.dtype == tf.string:
        image = decode_image(image, channels, max_pixels, min_size=(height, width), index=index)
    elif image.dtype.is_floating:
        image = _check_finite(image, index)
    if image.shape.rank == 3 and image.shape[-1] == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    # Resized from its own dtype: a uint8 image is never copied whole into float32.
    image = tf.image.resize(image, (height, width), method="bilinear", antialias=False)
    image = tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0)
    return tf.ensure_shape(image, (height, width, channels))


def error_detail(error: tf.errors.InvalidArgumentError) -> str:
    """The one line that says what is wrong with an image, from the InvalidArgumentError that
    :func:`decode_image` / :func:`preprocess_image` raised (eagerly or in a graph): the
    assertion's own message (``image 0: ... over the limit ...``) or the decoder's first line,
    without TensorFlow's function names, op names and stack lines.

    Args:
        error: the error raised while decoding or preprocessing an image.
    """
    message = error.message
    found = re.search(r"Summarized data: b['\"](.*?)['\"]\s*$", message, flags=re.M) or \
        re.search(r"assertion failed: \[(.*?)\]", message)
    if found:
        return found.group(1)
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not line.strip().startswith(("[[", "Detected", "<stack",
                                                              "Graph"))]
    detail = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", lines[0] if lines else message).strip()
    return detail.split(". One of ")[0].rstrip(".") or message
