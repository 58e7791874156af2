"""The serving functions: encoded bytes or raw pixels in, named probabilities / top-k out.

Both feed :func:`keras_vit.preprocess_image` (the training pipeline's own preprocessing)
and the model; the model's first layer does the [0, 255] -> [-1, 1] scaling.
"""
from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

from keras_vit import preprocess_image

BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"


def make_serving_functions(logits_fn, num_classes: int, image_size,
                           labels: Optional[Sequence[str]], top_k: int):
    """(serve_bytes, serve_images): plain functions for ExportArchive.

    ``logits_fn`` maps a float32 batch (batch, height, width, 3) of [0, 255] pixels to
    logits: the Keras model itself, or its frozen graph (:mod:`export.frozen`).
    """
    height, width = image_size
    k = min(top_k, num_classes)
    label_table = tf.constant(list(labels)) if labels else None
    pixels = tf.TensorSpec((height, width, 3), tf.float32)

    def outputs(images):
        logits = tf.cast(logits_fn(images), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=k)
        result = {"probabilities": probabilities, "scores": scores,
                  "classes": tf.cast(classes, tf.int32)}
        if label_table is not None:
            result["labels"] = tf.gather(label_table, classes)
        return result

    def serve_bytes(image_bytes):
        images = tf.map_fn(lambda b: preprocess_image(b, (height, width)), image_bytes,
                           fn_output_signature=pixels)
        return outputs(images)

    def serve_images(images):
        images = tf.map_fn(lambda im: preprocess_image(im, (height, width)), images,
                           fn_output_signature=pixels)
        return outputs(images)

    return serve_bytes, serve_images


SIGNATURES = {
    "serving_default": tf.TensorSpec([None], tf.string, name=BYTES_INPUT),
    "serving_images": tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT),
}
