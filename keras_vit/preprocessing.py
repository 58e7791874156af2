"""The one image preprocessing function of the project.

Training, evaluation, prediction and the TF Serving export all call
:func:`preprocess_image`, so what the server does to an image is what training did. It
decodes (when given bytes) to 3 channels and resizes to the model's resolution with
``tf.image.resize`` (bilinear, no antialias, as the original input pipeline). It does not
rescale: keras_vit models rescale [0, 255] -> [-1, 1] in their first layer.
"""
from __future__ import annotations

import tensorflow as tf

from keras_vit.position_embeddings import to_pair


def decode_image(image_bytes: tf.Tensor, channels: int = 3) -> tf.Tensor:
    """JPEG/PNG/BMP/GIF (first frame) bytes to a (H, W, channels) uint8 tensor.

    Empty or corrupt bytes fail with ``InvalidArgumentError`` naming the problem.
    """
    check = tf.debugging.assert_greater(
        tf.strings.length(image_bytes), 0,
        message="empty image: the request carried no image bytes")
    with tf.control_dependencies([check]):
        return tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)


def preprocess_image(image: tf.Tensor, image_size, channels: int = 3) -> tf.Tensor:
    """Encoded bytes or a (H, W, C) image -> float32 (h, w, channels) pixels in [0, 255].

    ``image_size`` is the model's resolution (int or (height, width)).
    """
    height, width = to_pair(image_size, "image_size")
    if image.dtype == tf.string:
        image = decode_image(image, channels)
    elif image.shape.rank == 3 and image.shape[-1] == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
    image = tf.image.resize(tf.cast(image, tf.float32), (height, width), method="bilinear",
                            antialias=False)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(image, (height, width, channels))
