"""`evaluate` counts a tie against the prediction: a fresh (zero-head) model scores chance."""
import numpy as np
import tensorflow as tf

import keras_vit
from tests.conftest import TINY, random_images
from training.trainer import evaluate


def test_fresh_zero_head_model_scores_chance_not_one():
    model = keras_vit.ViT(image_size=32, num_classes=10, **TINY)  # all logits exactly 0
    labels = np.arange(20) % 10
    ds = tf.data.Dataset.from_tensor_slices((random_images(20), labels)).batch(8)
    results = evaluate(model, ds)
    assert results["top1"] == 0.1 and results["top5"] == 0.5
