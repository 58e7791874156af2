"""Top-k accuracy: a tie is never a hit (keras_vit.metrics.top_k_hits)."""
import numpy as np
import tensorflow as tf

from keras_vit.metrics import top_k_hits


def _rate(labels, logits, k):
    return float(np.mean(top_k_hits(tf.constant(labels), tf.constant(logits, tf.float32),
                                    k).numpy()))


def test_equal_logits_score_chance():
    labels = np.arange(100) % 10
    logits = np.zeros((100, 10))                  # a fresh zero-initialised head
    assert _rate(labels, logits, 1) == 0.1
    assert _rate(labels, logits, 5) == 0.5


def test_ties_follow_top_k_order():
    logits = np.array([[1.0, 3.0, 3.0, 3.0, 0.0]] * 5)
    # Predicted top-2: classes 1 and 2 (the lower indices of the three tied at 3.0).
    hits = top_k_hits(tf.constant(np.arange(5)), tf.constant(logits, tf.float32), 2).numpy()
    np.testing.assert_array_equal(hits, [False, True, True, False, False])
    np.testing.assert_array_equal(
        top_k_hits(tf.constant([3, 0]), tf.constant([[0, 0, 1, 2.0], [5, 1, 2, 3.0]]), 1),
        [True, True])


def test_k_beyond_classes_and_non_finite_logits():
    logits = np.array([[0.0, 1.0, 2.0], [np.nan, 0.0, 0.0], [np.inf, 0.0, 0.0]])
    np.testing.assert_array_equal(top_k_hits(tf.constant([0, 0, 0]), logits, 5).numpy(),
                                  [True, False, False])


def test_inside_a_traced_function():
    fn = tf.function(lambda y, z: top_k_hits(y, z, 1))
    got = fn(tf.constant([1, 0], tf.int64), tf.constant([[0.0, 1.0], [0.0, 0.0]], tf.bfloat16))
    np.testing.assert_array_equal(got.numpy(), [True, True])
