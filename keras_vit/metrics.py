"""Top-k accuracy that never counts a tie as a hit."""
from __future__ import annotations

import tensorflow as tf


def top_k_hits(labels, logits, k: int = 1) -> tf.Tensor:
    """Whether each label is among the ``k`` predicted classes: a boolean (batch,) tensor.

    The predicted classes are the indices ``tf.math.top_k`` returns: the ``k`` highest
    logits, ties broken towards the lower class index (a fixed, documented order). So a
    class tied at the boundary counts as a hit only when it is among the ``k`` classes
    actually predicted, never merely for being tied: a model whose logits are all equal
    (a fresh zero-initialised head) predicts classes ``0..k-1`` and scores chance.
    ``tf.nn.in_top_k`` instead counts every tied class as inside the top k (all of them,
    for equal logits). Rows with a non-finite logit for the label count as misses.

    Args:
        labels: integer class indices, shape (batch,).
        logits: scores, shape (batch, classes); any float dtype.
        k: how many predicted classes count; clipped to the number of classes.

    Returns:
        A boolean tensor of shape (batch,).
    """
    logits = tf.cast(logits, tf.float32)
    k = min(int(k), logits.shape[-1]) if logits.shape[-1] is not None else int(k)
    predicted = tf.math.top_k(logits, k=k, sorted=True).indices
    labels = tf.cast(tf.reshape(labels, (-1, 1)), predicted.dtype)
    hit = tf.reduce_any(tf.equal(predicted, labels), axis=-1)
    label_logit = tf.gather(logits, labels[:, 0], axis=-1, batch_dims=1)
    return tf.logical_and(hit, tf.math.is_finite(label_logit))
