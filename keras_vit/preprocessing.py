"""The one image preprocessing function of the project.

Training, evaluation, prediction and the TF Serving export all call
:func:`preprocess_image`, so what the server does to an image is what training did. It
decodes (when given bytes) to 3 channels and resizes to the model's resolution with
``tf.image.resize`` (bilinear, no antialias, as the original input pipeline; a model built
from a checkpoint that says otherwise resizes with its ``interpolation``:
:func:`model_preprocessing`). It does not rescale: keras_vit models normalise [0, 255]
pixels in their first layer, ``x / 127.5 - 1`` (mean = std = 0.5, the original's) or, for a
checkpoint trained with other statistics, ``(x / 255 - mean) / std`` (:class:`PixelNormalization`).

Encoded bytes are untrusted input (a serving endpoint decodes whatever it is sent), so
:func:`decode_image` reads the image's size from its header first and refuses, before any
decoding, an image over ``max_pixels`` or a format other than JPEG, PNG, GIF and BMP. Only
stock TensorFlow ops are used, so the checks run inside an exported serving graph.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

import keras
import tensorflow as tf

from keras_vit.position_embeddings import to_pair

# 25 megapixels: a 6000x4000 photo. Decoding one image at the limit measured +76 MB for a
# PNG (3 bytes a pixel) and +153 MB for a progressive 4:4:4 JPEG (libjpeg holds every DCT
# coefficient), under the 200 MB a request may cost a server.
DEFAULT_MAX_PIXELS = 25_000_000
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# A GIF's first frame is found by following its blocks (with vector ops: the cost grows with
# the bytes, not with the number of blocks); one whose first frame does not end within this
# many bytes is refused.
MAX_GIF_FRAME_END = 16 * 2 ** 20
_GIF_WINDOW = 2 ** 16  # the blocks are followed this many bytes at a time (memory ~30x it)
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


def _follow(successor, start):
    """The node where the chain from ``start`` ends (one that is its own successor), by
    pointer jumping: each round replaces every node's successor with its successor's, so a
    chain of n links costs log2(n) vector gathers, never one loop step a link."""
    def unresolved(jumps):
        end = tf.gather(jumps, start)
        return tf.not_equal(tf.gather(jumps, end), end)

    jumps, = tf.while_loop(unresolved, lambda jumps: [tf.gather(jumps, jumps)], [successor],
                           maximum_iterations=32)
    return tf.gather(jumps, start)


def _gif_bytes(data, position, size):
    """``size`` bytes of ``data`` from ``position`` as int32, zeros past its end."""
    position = tf.minimum(position, tf.strings.length(data))  # substr refuses one past it
    chunk = tf.strings.substr(data, position, size) + b"\0" * 16
    return tf.cast(tf.io.decode_raw(chunk, tf.uint8), tf.int32)[:size]


def _gif_sub_blocks(data, position, in_extensions):
    """Follows a chain of GIF sub-blocks from ``position`` (< the data's length) within the
    next :data:`_GIF_WINDOW` bytes. Returns (where the walk goes on, whether the chain ended
    there).

    Every byte of the window is a node whose successor is where a walk landing on it goes:
    past its sub-block, or (``in_extensions``) past the next extension's introducer when a
    zero-length sub-block is followed by one. A zero-length sub-block that ends the chain, or
    a node whose successor is past the window, is its own successor.
    """
    size = tf.minimum(tf.strings.length(data) - position, _GIF_WINDOW)
    byte = _gif_bytes(data, position, size + 1)
    here, nodes = byte[:size], tf.range(size)
    continues = tf.logical_and(in_extensions, tf.equal(byte[1:], 0x21))
    ends = tf.logical_and(tf.equal(here, 0), tf.logical_not(continues))
    target = tf.where(ends, nodes + 1, tf.where(tf.equal(here, 0), nodes + 3, nodes + 1 + here))
    last = _follow(tf.where(tf.logical_or(ends, target >= size), nodes, target), 0)
    return position + tf.gather(target, last), tf.gather(ends, last)


def _gif_descriptor(data, position):
    """(is an image descriptor, where its image data starts, its width, height) at
    ``position``."""
    fields = _gif_bytes(data, position, 10)
    table = tf.where(fields[9] >= 128, 3 * tf.bitwise.left_shift(2, fields[9] % 8), 0)
    return (tf.equal(fields[0], 0x2C), position + 11 + table, fields[5] + 256 * fields[6],
            fields[7] + 256 * fields[8])


def _gif_first_frame_end(data):
    """(end offset, first frame width, height, ok) of the GIF's first image, following its
    blocks a window at a time; ``ok`` is false for a truncated or corrupt GIF, or one whose
    first frame does not end within its first :data:`MAX_GIF_FRAME_END` bytes."""
    length = tf.strings.length(data)
    flags = _gif_bytes(data, 10, 1)[0]
    start = 13 + tf.where(flags >= 128, 3 * tf.bitwise.left_shift(2, flags % 8), 0)
    lead = _gif_bytes(data, start, 1)[0]
    is_image, image_start, width, height = _gif_descriptor(data, start)
    # phase 0: in the extensions before the image, 1: in its image data, 2: done, 3: corrupt
    phase = tf.where(tf.equal(lead, 0x21), 0, tf.where(is_image, 1, 3))
    position = tf.where(tf.equal(phase, 0), start + 2, image_start)
    width, height = tf.where(is_image, width, 0), tf.where(is_image, height, 0)

    def body(position, phase, width, height):
        after, ended = _gif_sub_blocks(data, position, tf.equal(phase, 0))
        is_image, image_start, frame_width, frame_height = _gif_descriptor(data, after)
        described = tf.logical_and(ended, tf.equal(phase, 0))
        phase = tf.where(ended, tf.where(described, tf.where(is_image, 1, 3), 2), phase)
        return (tf.where(described, image_start, after), phase,
                tf.where(described, frame_width, width), tf.where(described, frame_height, height))

    def more(position, phase, width, height):
        return tf.logical_and(tf.logical_and(phase < 2, position < length),
                              position < MAX_GIF_FRAME_END)

    position, phase, width, height = tf.while_loop(more, body, (position, phase, width, height),
                                                   parallel_iterations=1)
    ok = tf.logical_and(tf.equal(phase, 2), position <= MAX_GIF_FRAME_END)
    return position, tf.where(ok, width, 0), tf.where(ok, height, 0), ok


def _decode_gif(data, channels, max_pixels, index):
    """The first frame only. ``tf.io.decode_gif`` decodes every frame, so the bytes are cut
    after the first image (and closed with the GIF trailer) before decoding."""
    padded = data + _HEADER_PAD
    width, height = _unsigned(padded, 6, 2), _unsigned(padded, 8, 2)
    end, frame_width, frame_height, ok = _gif_first_frame_end(data)
    checks = [_pixel_check(height, width, "GIF", max_pixels, index),
              _pixel_check(frame_height, frame_width, "GIF frame", max_pixels, index),
              _check(ok, index, "corrupt or truncated GIF, or its first frame does not end "
                     "within its first " + str(MAX_GIF_FRAME_END) + " bytes")]
    with tf.control_dependencies(checks):
        first = tf.strings.substr(data, 0, end) + b";"
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
                     max_pixels: int = DEFAULT_MAX_PIXELS, index=None,
                     interpolation: str = "bilinear") -> tf.Tensor:
    """Encoded bytes or a (H, W, C) image -> float32 (h, w, channels) pixels in [0, 255].

    ``image_size`` is the model's resolution (int or (height, width)). Bytes go through
    :func:`decode_image` (``max_pixels``, formats, DCT down-scaling of large JPEGs to no less
    than ``image_size``); float pixels must be finite. ``index`` (the image's place in its
    batch) is named in error messages. ``interpolation`` is the resize method
    (:data:`INTERPOLATIONS`; a model's own: :func:`model_preprocessing`).
    """
    check_interpolation(interpolation)
    height, width = to_pair(image_size, "image_size")
    if image.dtype == tf.string:
        image = decode_image(image, channels, max_pixels, min_size=(height, width), index=index)
    elif image.dtype.is_floating:
        image = _check_finite(image, index)
    if image.shape.rank == 3 and image.shape[-1] == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    # Resized from its own dtype: a uint8 image is never copied whole into float32.
    image = tf.image.resize(image, (height, width), method=interpolation, antialias=False)
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


# ---- The model's first layer: [0, 255] pixels -> the inputs its weights were trained on. ----

# tf.image.resize's methods (antialias off, as the original input pipeline).
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")
DEFAULT_MEAN = DEFAULT_STD = 0.5  # the original's: x / 127.5 - 1
DEFAULT_INTERPOLATION = "bilinear"


def check_interpolation(interpolation) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of "
                         f"{', '.join(INTERPOLATIONS)}")


def channel_values(values, channels: int, what: str) -> tuple:
    """``values`` (a number, or one per channel) as a tuple of ``channels`` finite floats;
    a ValueError naming ``what`` otherwise (``std`` must also be positive)."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,) * channels
    try:
        values = tuple(float(v) for v in values if not isinstance(v, bool))
    except (TypeError, ValueError):
        values = ()
    if len(values) != channels or not all(map(math.isfinite, values)) or \
            (what == "std" and min(values) <= 0):
        raise ValueError(f"{what} must be a number or {channels} finite numbers "
                         f"(one per channel{', positive' if what == 'std' else ''}) on the "
                         f"[0, 1] scale of the pixels, e.g. (0.485, 0.456, 0.406)")
    return values


def is_default_preprocessing(mean, std, interpolation) -> bool:
    """Whether these are the original's (the model's first layer is then a plain
    ``Rescaling(1 / 127.5, offset=-1)``, as in every keras_vit model before them)."""
    return (all(v == DEFAULT_MEAN for v in mean) and all(v == DEFAULT_STD for v in std)
            and interpolation == DEFAULT_INTERPOLATION)


@keras.saving.register_keras_serializable(package="keras_vit")
class PixelNormalization(keras.layers.Rescaling):
    """``(pixels / 255 - mean) / std`` per channel: the first layer of a model built for a
    checkpoint trained with other statistics than the original's (ImageNet's mean / std for
    DeiT and many fine-tunes). It also records the checkpoint's resize ``interpolation``,
    which the serving export and ``keras-vit predict`` resize with (:func:`model_preprocessing`).
    Saved in ``.keras`` files with its model.

    Args:
        mean, std: one value per channel, on the [0, 1] scale of the pixels.
        interpolation: the resize method (:data:`INTERPOLATIONS`).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 interpolation: str = DEFAULT_INTERPOLATION, **kwargs):
        kwargs.pop("scale", None)
        kwargs.pop("offset", None)
        mean = channel_values(mean, len(mean), "mean")
        std = channel_values(std, len(mean), "std")
        check_interpolation(interpolation)
        super().__init__(scale=[1.0 / (255.0 * s) for s in std],
                         offset=[-m / s for m, s in zip(mean, std)], **kwargs)
        self.mean, self.std, self.interpolation = mean, std, interpolation

    def get_config(self):
        config = super().get_config()
        config.pop("scale", None)
        config.pop("offset", None)
        config.update(mean=list(self.mean), std=list(self.std),
                      interpolation=self.interpolation)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def normalization_layer(mean, std, interpolation, channels: int, dtype=None):
    """The model's first layer for these statistics: the original's ``Rescaling`` when they
    are the defaults (None), else a :class:`PixelNormalization`; both named ``rescaling``."""
    mean = channel_values(DEFAULT_MEAN if mean is None else mean, channels, "mean")
    std = channel_values(DEFAULT_STD if std is None else std, channels, "std")
    interpolation = interpolation or DEFAULT_INTERPOLATION
    check_interpolation(interpolation)
    if is_default_preprocessing(mean, std, interpolation):
        # Original input pipeline: x / 127.5 - 1, no mean/std normalisation.
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescaling", dtype=dtype)
    return PixelNormalization(mean, std, interpolation, name="rescaling", dtype=dtype)


def model_preprocessing(model) -> Optional[dict]:
    """``{"mean", "std", "interpolation"}`` of a keras_vit model's first layer (what it
    expects of [0, 255] pixels and how they should be resized), or None for a model built
    with ``include_preprocessing=False``."""
    names = [layer.name for layer in model.layers]
    if "rescaling" not in names:
        return None
    layer = model.get_layer("rescaling")
    if isinstance(layer, PixelNormalization):
        return dict(mean=layer.mean, std=layer.std, interpolation=layer.interpolation)
    channels = model.input_shape[-1] or 3
    return dict(mean=(DEFAULT_MEAN,) * channels, std=(DEFAULT_STD,) * channels,
                interpolation=DEFAULT_INTERPOLATION)


def model_interpolation(model) -> str:
    """The resize method of ``model``'s inputs (:func:`model_preprocessing`; bilinear for
    a model without preprocessing)."""
    found = model_preprocessing(model)
    return found["interpolation"] if found else DEFAULT_INTERPOLATION
