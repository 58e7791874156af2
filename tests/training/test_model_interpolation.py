"""Evaluation and inspection resize images the way the model's checkpoint was trained
(its interpolation, e.g. bicubic for DeiT), as predict and the export do."""
import os

import numpy as np
import tensorflow as tf

import keras_vit
from training.commands.evaluate import evaluation_batches
from training.commands.inspect import inspection_images
from training.data import load_source


def _folder(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        os.makedirs(tmp_path / label)
        for i in range(2):
            pixels = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
            (tmp_path / label / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    return str(tmp_path)


def _resized(path, method):
    data = tf.io.read_file(path)
    return keras_vit.preprocess_image(data, (16, 16), interpolation=method).numpy()


def test_evaluation_batches_are_resized_with_the_models_interpolation(tmp_path):
    folder = _folder(tmp_path)
    model = keras_vit.ViT(image_size=16, patch_size=8, hidden_size=8, mlp_size=8, num_heads=2,
                          num_layers=1, num_classes=2, interpolation="bicubic")
    source = load_source(f"folder:{folder}")
    images, labels = next(iter(evaluation_batches(model, source, 8)))
    # the test split holds one image a class (the fixed split of folder:)
    names = [str(n.numpy().decode()) for n in source.test.map(lambda item, label: item)]
    want = np.stack([_resized(name, "bicubic") for name in names])
    assert np.array_equal(images.numpy(), want)
    assert not np.array_equal(want, np.stack([_resized(name, "bilinear") for name in names]))


def test_inspection_images_are_resized_with_the_given_interpolation(tmp_path):
    folder = _folder(tmp_path)
    directory = os.path.join(folder, "a")
    images = inspection_images(directory, (16, 16), "bicubic")
    paths = sorted(os.path.join(directory, name) for name in os.listdir(directory))
    assert np.array_equal(images, np.stack([_resized(path, "bicubic") for path in paths]))
