"""The training loss on int64 labels or on soft targets (training.augment: Mixup, CutMix,
label smoothing), and the labels that top-1 accuracy counts."""
from __future__ import annotations

import keras
import tensorflow as tf


def is_soft(labels) -> bool:
    """Soft targets: (batch, classes) floats; else int labels (batch,)."""
    return labels.dtype.is_floating and labels.shape.rank == 2


def per_example_loss(labels, logits) -> tf.Tensor:
    """Cross-entropy per example. Int labels: label -1 (an image that could not be read,
    training.data.BadImages) adds nothing, the computation is the one of hard-label runs
    before soft targets existed (bit for bit). Soft targets: -sum(t * log softmax); an
    unreadable image's row of zeros adds nothing of its own."""
    if is_soft(labels):
        return -tf.reduce_sum(labels * tf.nn.log_softmax(logits, axis=-1), axis=-1)
    per_example = keras.losses.sparse_categorical_crossentropy(
        tf.maximum(labels, 0), logits, from_logits=True)
    return tf.where(labels >= 0, per_example, tf.zeros_like(per_example))


def hard_labels(labels) -> tf.Tensor:
    """The class accuracy is counted against: a soft target's largest entry (-1 for a row
    of zeros), or the int label itself."""
    if not is_soft(labels):
        return labels
    return tf.where(tf.reduce_sum(labels, -1) > 0, tf.argmax(labels, -1), tf.constant(-1, tf.int64))
