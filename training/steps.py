"""The step functions: the distributed training step (:func:`make_train_step`) and the
distributed evaluation (:func:`evaluate`)."""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

import keras_vit
from export.progress import Progress
from training.losses import hard_labels, per_example_loss


def _top_k_correct(labels, logits, k):
    """How many of the labels are among the ``k`` predicted classes (a tie is no hit); a
    label -1 (an image that could not be read) is no hit."""
    hits = keras_vit.metrics.top_k_hits(tf.maximum(labels, 0), logits, k)
    return tf.reduce_sum(tf.cast(tf.logical_and(hits, labels >= 0), tf.float32))


def make_train_step(model, optimizer, strategy, global_batch_size: int,
                    clip_global_norm: Optional[float] = None, loss_scaling: bool = False,
                    jit_compile: bool = False, seed: int = 0, accumulate: int = 1,
                    average=None):
    """The distributed training step ``(images, labels) -> (mean loss, top-1 correct)``.

    Loss averaged over the global batch; with ``clip_global_norm`` the gradient is clipped
    by its global norm after the all-reduce, as the paper does, in every precision; with
    ``loss_scaling`` the optimizer is a ``LossScaleOptimizer`` and the scaled gradient is
    clipped at the scaled threshold (the same clip; a non-finite gradient stays non-finite,
    so the optimizer still skips that step and lowers the scale).
    ``accumulate``: K micro-batches a replica, summed before the clip
    (:func:`accumulated_gradients`); ``average``: a :class:`training.ema.WeightAverage`.
    """
    replicas = strategy.num_replicas_in_sync

    def gradients(images, labels):
        with tf.GradientTape() as tape, \
                keras_vit.layers.drop_path_seed(_drop_path_key(seed, optimizer)):
            logits = tf.cast(model(images, training=True), tf.float32)
            # Int labels or soft targets (Mixup, CutMix, smoothing: training.augment); label
            # -1, an image that could not be read (training.data.BadImages), kept in its
            # place so that batches stay a function of (seed, step), adds nothing.
            per_example = per_example_loss(labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        return loss, _top_k_correct(hard_labels(labels), logits, 1), grads

    def step_fn(images, labels):
        loss, correct, grads = accumulated_gradients(gradients, images, labels, accumulate,
                                                     model.trainable_variables)
        if clip_global_norm:
            # Keras's optimizer sums gradients over replicas again, hence the division.
            context = tf.distribute.get_replica_context()
            if replicas > 1:
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            threshold = clip_global_norm
            if loss_scaling:
                threshold = clip_global_norm * tf.cast(optimizer.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, threshold)
            if replicas > 1:
                grads = [g / replicas for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, correct

    @tf.function(jit_compile=jit_compile or None)
    def replica_step(images, labels):
        return step_fn(images, labels)

    @tf.function
    def train_step(images, labels):
        loss, correct = strategy.run(replica_step, args=(images, labels))
        if average is not None:
            average.update()  # reads the updated weights (automatic control dependencies)
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return train_step


def _drop_path_key(seed: int, optimizer):
    """Stochastic depth keyed by (seed, step, replica): a resumed run drops the same branches
    (keras_vit.layers.drop_path_seed); every micro-batch of a step uses the step's key."""
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    return tf.random.experimental.stateless_fold_in(
        tf.stack([tf.constant(seed, tf.int64), tf.cast(optimizer.iterations, tf.int64)]),
        tf.cast(replica, tf.int64))


def micro_batches(tensor, accumulate: int):
    """``tensor`` ``[b, ...]`` as ``[accumulate, b / accumulate, ...]``: micro-batch k holds
    rows ``k*b/K .. (k+1)*b/K - 1``, so the K micro-batches are the batch itself."""
    if tensor.shape[1:].is_fully_defined():
        return tf.reshape(tensor, [accumulate, -1, *tensor.shape[1:]])
    return tf.reshape(tensor, tf.concat([[accumulate, -1], tf.shape(tensor)[1:]], axis=0))


def accumulated_gradients(gradients, images, labels, accumulate: int, variables):
    """``gradients(images, labels) -> (loss, correct, grads)`` summed over the
    ``accumulate`` micro-batches of this replica's batch, one after the other (so that the
    step equals the un-accumulated one, in 1/K of its activation memory).

    Each micro-batch's loss is already its share of the global-batch mean (the sum over its
    examples divided by the global batch size), so the sums are the loss and gradient of the
    whole batch. ``parallel_iterations=1``: the next micro-batch starts only when the
    previous one's gradient is added, so only one micro-batch's activations are alive.
    Under loss scaling the scaled gradients are summed: the scale changes only when the
    optimizer applies, so it is the same for every micro-batch of a step, and an overflow
    in any of them leaves the sum non-finite (the step is skipped, as without accumulation).
    """
    if accumulate == 1:
        return gradients(images, labels)
    images, labels = micro_batches(images, accumulate), micro_batches(labels, accumulate)

    def body(k, loss, correct, sums):
        part_loss, part_correct, grads = gradients(images[k], labels[k])
        sums = [s if g is None else s + tf.cast(g, s.dtype) for s, g in zip(sums, grads)]
        return k + 1, loss + part_loss, correct + part_correct, sums

    start = (tf.constant(0), tf.constant(0.0), tf.constant(0.0),
             [tf.zeros(v.shape, v.dtype) for v in variables])
    _, loss, correct, grads = tf.while_loop(lambda k, *_: k < accumulate, body, start,
                                            parallel_iterations=1)
    return loss, correct, grads


def _evaluation_sums(model, images, labels):
    """(summed loss, top-1 hits, top-5 hits, count) of a batch; label -1 marks padding."""
    logits = tf.cast(model(images, training=False), tf.float32)
    keep = labels >= 0
    labels, logits = tf.boolean_mask(labels, keep), tf.boolean_mask(logits, keep)
    loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                      from_logits=True))
    return (loss, _top_k_correct(labels, logits, 1), _top_k_correct(labels, logits, 5),
            tf.cast(tf.shape(labels)[0], tf.float32))


def evaluate(model, dataset, strategy=None) -> dict:
    """Top-1 / top-5 accuracy and mean loss of ``model`` on a batched dataset (with
    ``strategy``: a distributed one, each replica evaluating its share)."""
    strategy = strategy or tf.distribute.get_strategy()

    @tf.function
    def step(images, labels):
        sums = strategy.run(lambda x, y: _evaluation_sums(model, x, y), args=(images, labels))
        return tf.stack([strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None)
                         for s in sums])

    totals = tf.zeros([4])
    progress = Progress(unit="batch")  # shown on a terminal
    for images, labels in dataset:
        totals += step(images, labels)  # summed on the device: one host sync at the end
        progress.advance()
    progress.close()
    loss, top1, top5, count = (float(t) for t in totals.numpy())
    count = max(count, 1.0)
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count,
            "num_examples": int(totals[3])}
