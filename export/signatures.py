"""The signature table and the serving functions it describes.

:data:`SIGNATURES` is the one description of what the export serves: the writer builds its
endpoints from it, the verification checks a loaded version against it and the clients
take their input keys from it. Both serving functions feed :func:`keras_vit.preprocess_image`
(the training pipeline's own preprocessing) and the model; the model's first layer does the
[0, 255] -> [-1, 1] scaling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from keras_vit import preprocess_image
from keras_vit.preprocessing import DEFAULT_MAX_PIXELS, _check

PREDICT_METHOD = "tensorflow/serving/predict"
# Most images one request may carry (export option max_batch, --max-batch). A request's
# memory grows with its batch (decoded and resized pixels, activations: ~2.3 MB an image for
# ViT-Ti/16 at 224); 64 is the largest batch the benchmarks measure (ViT-B/16 at 224: under
# 2 GB peak in a TF1 session) and what TF Serving's batching should be set to merge up to.
DEFAULT_MAX_BATCH = 64


@dataclass(frozen=True)
class Signature:
    """One served signature: its key, its single input, and how that input is decoded."""
    name: str
    input_key: str
    dtype: str  # a tf.dtypes name
    shape: Tuple[int, ...]  # -1: any size
    encoded: bool  # image bytes (decoded in the graph) rather than pixels

    def spec(self) -> tf.TensorSpec:
        return tf.TensorSpec([None if d == -1 else d for d in self.shape],
                             tf.dtypes.as_dtype(self.dtype), name=self.input_key)


SIGNATURES = (
    Signature("serving_default", "image_bytes", "string", (-1,), encoded=True),
    Signature("serving_images", "images", "float32", (-1, -1, -1, 3), encoded=False),
)
DEFAULT_SIGNATURE = SIGNATURES[0]
# Outputs of every signature of a classifier: name -> (dtype, shape); "K": the model's class
# count, "k": the export's top-k. "labels" only when class names are known.
OUTPUTS = {"probabilities": ("float32", (-1, "K")), "scores": ("float32", (-1, "k")),
           "classes": ("int32", (-1, "k"))}
OPTIONAL_OUTPUTS = {"labels": ("string", (-1, "k"))}
# Outputs of every signature of a headless tower (a model without a head, e.g. a CLIP,
# DINOv2 or SigLIP image tower: keras_vit.models.has_head): its pooled features as they are
# (not normalised), "D" their width. No softmax, top-k or labels.
EMBEDDING_OUTPUTS = {"embedding": ("float32", (-1, "D"))}
# What a version serves, recorded in its export info ("outputs"): class scores or embeddings.
OUTPUT_KINDS = ("classes", "embedding")


def outputs_of(kind: str) -> dict:
    """The outputs every signature of a ``kind`` export has (:data:`OUTPUT_KINDS`)."""
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind {kind!r} (known: {', '.join(OUTPUT_KINDS)})")
    return OUTPUTS if kind == "classes" else EMBEDDING_OUTPUTS


def find_signature(name: str) -> Signature:
    for sig in SIGNATURES:
        if sig.name == name:
            return sig
    raise ValueError(f"unknown signature {name!r} (known: "
                     f"{', '.join(s.name for s in SIGNATURES)})")


def _class_outputs(num_classes: int, labels: Optional[Sequence[str]], top_k: int):
    """float32 logits -> the classifier's outputs (:data:`OUTPUTS`, labels when known)."""
    label_table = tf.constant(list(labels)) if labels else None

    def outputs(logits):
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=min(top_k, num_classes))
        result = {"probabilities": probabilities, "scores": scores,
                  "classes": tf.cast(classes, tf.int32)}
        if label_table is not None:
            result["labels"] = tf.gather(label_table, classes)
        return result
    return outputs


def make_serving_functions(model_fn, num_classes: Optional[int], image_size,
                           labels: Optional[Sequence[str]], top_k: int,
                           max_pixels: int = DEFAULT_MAX_PIXELS,
                           max_batch: int = DEFAULT_MAX_BATCH,
                           interpolation: str = "bilinear") -> dict:
    """``{signature name: function}`` for ExportArchive, one per :data:`SIGNATURES` entry.

    ``model_fn`` maps a float32 batch (batch, height, width, 3) of [0, 255] pixels to
    logits (a classifier of ``num_classes``: :data:`OUTPUTS`) or, with ``num_classes=None``,
    to a headless tower's embeddings (:data:`EMBEDDING_OUTPUTS`, ``labels`` and ``top_k``
    unused): the Keras model itself, or its frozen graph (:mod:`export.frozen`).
    ``max_pixels`` bounds each encoded image (checked from its header before decoding).
    The images of a request are decoded one at a time, so its decoding memory is that of
    its largest image; a bad image fails the whole request with a message naming its index.
    A request of more than ``max_batch`` images is refused (InvalidArgument) before anything
    is decoded, so its memory is bounded whatever its size. Images are resized with
    ``interpolation`` (the model's: :func:`keras_vit.preprocessing.model_interpolation`).
    """
    height, width = image_size
    pixels = tf.TensorSpec((height, width, 3), tf.float32)
    heads = (_class_outputs(num_classes, labels, top_k) if num_classes is not None
             else lambda embedding: {"embedding": embedding})

    def outputs(images):
        # An empty batch gets empty outputs: the model runs on one blank image, cut away.
        count = tf.shape(images)[0]
        padded = tf.concat([images, tf.zeros([tf.maximum(1 - count, 0), height, width, 3])], 0)
        return heads(tf.cast(model_fn(padded), tf.float32)[:count])

    def preprocess_batch(batch, parallel_iterations):
        indices = tf.range(tf.shape(batch)[0])
        return tf.map_fn(
            lambda item: preprocess_image(item[1], (height, width), max_pixels=max_pixels,
                                          index=item[0], interpolation=interpolation),
            (indices, batch), fn_output_signature=pixels,
            parallel_iterations=parallel_iterations)

    def bounded(inputs):
        count = tf.shape(inputs)[0]
        check = _check(count <= max_batch, None, "request of {} images, over the limit of "
                       f"{max_batch} images a request (max_batch)", count)
        with tf.control_dependencies([check]):
            return tf.identity(inputs)

    def make(sig):
        def serve(inputs):
            # Decoding is what costs memory: one image at a time. Pixels resize in parallel.
            return outputs(preprocess_batch(bounded(inputs), 1 if sig.encoded else 10))
        serve.__name__ = sig.name
        return serve

    return {sig.name: make(sig) for sig in SIGNATURES}
