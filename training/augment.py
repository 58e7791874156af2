"""The from-scratch augmentations of DeiT (Touvron et al. 2021, arXiv 2012.12877) and the
plain-ViT baselines (Beyer et al. 2022, arXiv 2205.01580): RandAugment, random erasing,
Mixup / CutMix with soft (optionally smoothed) targets.

Every function is stateless: its randomness comes from a ``seed`` tensor (shape [2]) that the
input pipeline derives from (run seed + epoch, position in the epoch's order) per image, or
(run seed + epoch, input pipeline, batch index) per batch, so a resumed run sees exactly the
images an uninterrupted one would. Keras's ``RandAugment`` / ``MixUp`` / ``CutMix`` /
``RandomErasing`` layers draw from a ``SeedGenerator`` (a variable advanced by each call):
their output depends on how many images went through them before, not on (seed, position),
and a fixed tensor seed passed to them is reused for every draw of a call. Hence these ops.

Images are float32 (H, W, 3) pixels in [0, 255] (what :func:`keras_vit.preprocess_image`
returns); batches (B, H, W, 3).
"""
from __future__ import annotations

import math

import tensorflow as tf

_MAX_LEVEL = 10.0  # RandAugment magnitudes run 0..10 (timm's _LEVEL_DENOM, big_vision's)
_FILL = 128.0      # what geometric ops uncover (timm's fill colour)


def fold_in(seed, data) -> tf.Tensor:
    """A new [2] seed from ``seed`` and an integer (stream names, indices)."""
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64),
                                                    tf.cast(data, tf.int64))


def _uniform(seed, shape=(), low=0.0, high=1.0):
    return tf.random.stateless_uniform(shape, seed, low, high, tf.float32)


# --- RandAugment (Cubuk et al. 2020; timm's "rand-m9-mstd0.5-inc1" op set) -------------------

def _blend(base, image, factor):
    return tf.clip_by_value(base + factor * (image - base), 0.0, 255.0)


def _gray(image):
    return tf.reduce_sum(image * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)


def _affine(image, transform):
    """``image`` resampled at ``transform`` (8 numbers: output (x, y) -> input point)."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(tf.reshape(transform, (1, 8)), tf.float32),
        output_shape=tf.shape(image)[:2], fill_value=_FILL, interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return out[0]


def _auto_contrast(image):
    low = tf.reduce_min(image, [0, 1], keepdims=True)
    high = tf.reduce_max(image, [0, 1], keepdims=True)
    scaled = (image - low) * 255.0 / tf.maximum(high - low, 1e-6)
    return tf.where(high > low, scaled, image)


def _equalize(image):
    """Histogram equalisation per channel (PIL ImageOps.equalize)."""
    def channel(values):
        values = tf.cast(tf.clip_by_value(tf.round(values), 0, 255), tf.int32)
        hist = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
        last = tf.gather(hist, tf.reduce_max(tf.where(hist > 0)))
        step = (tf.reduce_sum(hist) - last) // 255
        lut = (tf.cumsum(hist) - hist + step // 2) // tf.maximum(step, 1)
        lut = tf.clip_by_value(lut, 0, 255)
        return tf.where(step > 0, tf.cast(tf.gather(lut, values), tf.float32),
                        tf.cast(values, tf.float32))

    return tf.stack([channel(image[..., c]) for c in range(3)], -1)


def _posterize(image, level):
    """PosterizeIncreasing: keep 4 - level*4/10 bits."""
    shift = 2.0 ** (8 - (4 - tf.floor(level / _MAX_LEVEL * 4)))
    return tf.floor(tf.clip_by_value(image, 0, 255) / shift) * shift


def _sharpness(image, factor):
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(image[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    border = tf.pad(tf.zeros_like(smooth[1:-1, 1:-1, :1]), [[1, 1], [1, 1], [0, 0]],
                    constant_values=1.0)
    smooth = border * image + (1.0 - border) * smooth  # PIL keeps the border pixels
    return _blend(smooth, image, factor)


def _rotate(image, degrees):
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1],
                                                                     tf.float32)
    angle = degrees * math.pi / 180.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    return _affine(image, [cos, -sin, cx - cos * cx + sin * cy,
                           sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])


def _ops(image, level, sign):
    """The 15 branches (level in 0..10, sign +-1) of :func:`rand_augment`, in timm's order."""
    unit = level / _MAX_LEVEL
    enhance = 1.0 + sign * unit * 0.9   # the "Increasing" enhancement factors: 0.1..1.9
    shear = sign * unit * 0.3
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1],
                                                                     tf.float32)
    return [
        lambda: _auto_contrast(image),
        lambda: _equalize(image),
        lambda: 255.0 - image,                                                   # invert
        lambda: _rotate(image, sign * unit * 30.0),
        lambda: _posterize(image, level),
        lambda: tf.where(image >= 256.0 - unit * 256.0, 255.0 - image, image),   # solarize
        lambda: tf.where(image < 128.0, tf.minimum(image + unit * 110.0, 255.0), image),
        lambda: _blend(_gray(image), image, enhance),                            # color
        lambda: _blend(tf.reduce_mean(_gray(image)), image, enhance),            # contrast
        lambda: _blend(tf.zeros_like(image), image, enhance),                    # brightness
        lambda: _sharpness(image, enhance),
        lambda: _affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]),      # shear x
        lambda: _affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0, 0.0, 0.0]),      # shear y
        lambda: _affine(image, [1.0, 0.0, sign * unit * 0.45 * width, 0.0, 1.0, 0.0, 0.0,
                                0.0]),                                           # translate x
        lambda: _affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, sign * unit * 0.45 * height, 0.0,
                                0.0]),                                           # translate y
    ]


NUM_OPS = 15
OP_NAMES = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
            "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
            "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel")


def apply_op(image, op, level, sign=1.0) -> tf.Tensor:
    """RandAugment op number ``op`` (see :data:`OP_NAMES`) at ``level`` (0..10)."""
    image = tf.convert_to_tensor(image, tf.float32)
    level = tf.cast(level, tf.float32)
    sign = tf.cast(sign, tf.float32)
    out = tf.switch_case(tf.cast(op, tf.int32), _ops(image, level, sign))
    return tf.ensure_shape(out, image.shape)


def rand_augment(image, num_layers: int, magnitude: float, seed,
                 magnitude_std: float = 0.5, probability: float = 0.5) -> tf.Tensor:
    """RandAugment as timm's ``rand-m{magnitude}-mstd{magnitude_std}-inc1`` (DeiT) or, with
    ``magnitude_std=0``, a fixed magnitude: ``num_layers`` ops drawn uniformly with
    replacement, each applied with ``probability``, at a magnitude drawn from
    N(magnitude, magnitude_std) clipped to [0, 10], with a random sign for the signed ops."""
    image = tf.convert_to_tensor(image, tf.float32)
    for layer in range(num_layers):
        key = fold_in(seed, layer)
        draws = _uniform(key, (3,))
        op = tf.minimum(tf.cast(draws[0] * NUM_OPS, tf.int32), NUM_OPS - 1)
        level = magnitude + magnitude_std * tf.random.stateless_normal((), fold_in(key, 1))
        level = tf.clip_by_value(level, 0.0, _MAX_LEVEL) if magnitude_std > 0 else \
            tf.constant(float(magnitude))
        sign = tf.where(draws[2] < 0.5, -1.0, 1.0)
        image = _maybe_apply(draws[1] < probability, image, op, level, sign)
    return image


def _maybe_apply(condition, image, op, level, sign):
    return tf.cond(condition, lambda: apply_op(image, op, level, sign), lambda: image)


# --- Random erasing (Zhong et al. 2020; timm RandomErasing, mode "pixel", one box) ----------

def random_erasing(image, probability: float, seed, area=(0.02, 1 / 3), aspect=(0.3, 1 / 0.3),
                   attempts: int = 10):
    """With ``probability``, one rectangle of ``area`` (fraction of the image) and aspect ratio
    in 0.3..3.3 filled with per-pixel normal noise: N(0, 1) in the model's [-1, 1] input
    scale, that is 127.5 + 127.5 * N(0, 1) pixels (not clipped), as timm erases after
    normalisation. Of ``attempts`` boxes drawn, the first that fits is used (none: no
    erasing)."""
    image = tf.convert_to_tensor(image, tf.float32)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    draws = _uniform(fold_in(seed, 0), (5, attempts))
    target = (area[0] + draws[0] * (area[1] - area[0])) * h_f * w_f
    low, high = math.log(aspect[0]), math.log(aspect[1])
    aspect = tf.exp(low + draws[1] * (high - low))
    box_h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    box_w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    fits = tf.logical_and(box_h < height, box_w < width)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    box_h, box_w = box_h[first], box_w[first]
    top = tf.cast(draws[2, first] * tf.cast(height - box_h + 1, tf.float32), tf.int32)
    left = tf.cast(draws[3, first] * tf.cast(width - box_w + 1, tf.float32), tf.int32)
    erase = tf.logical_and(draws[4, 0] < probability, tf.reduce_any(fits))
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)

    def erased():
        noise = 127.5 + 127.5 * tf.random.stateless_normal(tf.shape(image), fold_in(seed, 1))
        return tf.where(inside, noise, image)

    return tf.cond(erase, erased, lambda: image)  # the noise only for the images erased


# --- Targets, Mixup and CutMix (Zhang et al. 2018; Yun et al. 2019; timm Mixup, "batch") ---

def soft_targets(labels, num_classes: int, label_smoothing: float = 0.0) -> tf.Tensor:
    """(B, num_classes) float32 targets: one-hot, smoothed as timm does (1 - s + s/C on the
    class, s/C elsewhere); a label -1 (an image that could not be read) is all zeros."""
    off = label_smoothing / num_classes
    targets = tf.one_hot(labels, num_classes, on_value=1.0 - label_smoothing + off,
                         off_value=off, dtype=tf.float32)
    return targets * tf.cast(labels >= 0, tf.float32)[:, None]


def _beta(seed, alpha):
    """A Beta(alpha, alpha) draw from two stateless gamma draws."""
    gammas = tf.random.stateless_gamma((2,), fold_in(seed, 7), alpha=alpha, dtype=tf.float32)
    return gammas[0] / tf.maximum(gammas[0] + gammas[1], 1e-12)


def cutmix_box(height, width, lam, seed):
    """(top, bottom, left, right) of CutMix's box for ratio ``lam``: sides sqrt(1 - lam) of
    the image's, centre uniform, clipped at the borders (timm ``rand_bbox``)."""
    cut = tf.sqrt(1.0 - lam)
    cut_h = tf.cast(tf.cast(height, tf.float32) * cut, tf.int32)
    cut_w = tf.cast(tf.cast(width, tf.float32) * cut, tf.int32)
    centre = _uniform(fold_in(seed, 8), (2,))
    cy = tf.cast(centre[0] * tf.cast(height, tf.float32), tf.int32)
    cx = tf.cast(centre[1] * tf.cast(width, tf.float32), tf.int32)
    return (tf.clip_by_value(cy - cut_h // 2, 0, height),
            tf.clip_by_value(cy + cut_h // 2, 0, height),
            tf.clip_by_value(cx - cut_w // 2, 0, width),
            tf.clip_by_value(cx + cut_w // 2, 0, width))


def mix_batch(images, targets, seed, *, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              probability: float = 1.0, switch_probability: float = 0.5):
    """Mixup or CutMix of a batch with itself reversed, one ratio per batch (timm ``Mixup``,
    mode "batch", as DeiT; big_vision mixes with the batch rolled by one, an equivalent
    pairing). With both alphas > 0, CutMix is chosen with ``switch_probability``; the batch is
    mixed with ``probability`` (else returned unchanged). CutMix's ratio is the area actually
    kept (timm ``correct_lam``). Returns (images, targets, ratio, used_cutmix)."""
    draws = _uniform(fold_in(seed, 0), (2,))
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = draws[0] < switch_probability
    else:
        use_cutmix = tf.constant(cutmix_alpha > 0)
    lam = _beta(seed, cutmix_alpha) if cutmix_alpha > 0 else tf.constant(1.0)
    if mixup_alpha > 0:
        lam = tf.where(use_cutmix, lam, _beta(fold_in(seed, 1), mixup_alpha))
    lam = tf.where(draws[1] < probability, lam, 1.0)
    other = tf.reverse(images, [0])
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    top, bottom, left, right = cutmix_box(height, width, lam, seed)
    rows = tf.range(height)[:, None, None]
    cols = tf.range(width)[None, :, None]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    kept = 1.0 - tf.cast((bottom - top) * (right - left), tf.float32) / tf.cast(
        height * width, tf.float32)
    # One of the two is computed (each is a pass over the whole batch).
    images = tf.cond(use_cutmix, lambda: tf.where(inside[None], other, images),
                     lambda: lam * images + (1.0 - lam) * other)
    lam = tf.where(use_cutmix, kept, lam)
    targets = lam * targets + (1.0 - lam) * tf.reverse(targets, [0])
    return images, targets, lam, use_cutmix


# --- What a recipe asks of the input pipeline (training.data.make_train_pipeline) ----------

_IMAGE_STREAM, _ERASING_STREAM, _BATCH_STREAM = 1_000_001, 1_000_002, 1_000_003


def image_augmenter(recipe):
    """``(image, seed) -> image`` applying the recipe's RandAugment and random erasing (after
    the crop, resize and flip), or None when it asks for neither. ``seed`` is the image's
    (seed + epoch, position) key."""
    if not recipe.rand_augment_layers and not recipe.random_erasing:
        return None

    def apply(image, seed):
        if recipe.rand_augment_layers:
            image = rand_augment(image, recipe.rand_augment_layers,
                                 float(recipe.rand_augment_magnitude),
                                 fold_in(seed, _IMAGE_STREAM),
                                 float(recipe.rand_augment_magnitude_std))
        if recipe.random_erasing:
            image = random_erasing(image, float(recipe.random_erasing),
                                   fold_in(seed, _ERASING_STREAM))
        return image

    return apply


def batch_mixer(recipe, num_classes: int):
    """``(images, labels, seed) -> (images, targets)``: the recipe's soft targets (label
    smoothing) and Mixup / CutMix, or None for hard-label recipes (int64 labels, as before).
    ``seed`` is the batch's (seed + epoch, input pipeline, batch index) key."""
    if not recipe.soft_targets:
        return None
    mixes = recipe.mixup_alpha > 0 or recipe.cutmix_alpha > 0

    def apply(images, labels, seed):
        targets = soft_targets(labels, num_classes, float(recipe.label_smoothing))
        if mixes:
            images, targets, _, _ = mix_batch(
                images, targets, fold_in(seed, _BATCH_STREAM),
                mixup_alpha=float(recipe.mixup_alpha), cutmix_alpha=float(recipe.cutmix_alpha),
                probability=float(recipe.mix_probability),
                switch_probability=float(recipe.mix_switch_probability))
        return images, targets

    return apply
