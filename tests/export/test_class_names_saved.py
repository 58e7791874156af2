"""A model's class names are saved in its ``.keras`` file: a reload (safe mode) has them, and
``keras-vit predict`` labels with them."""
import json

import keras
import tensorflow as tf

from training.cli import main

NAMES = ["cat", "dog", "fish", "bird", "frog"]


def test_class_names_survive_a_keras_file_and_label_predictions(tiny_model, tmp_path, capsys):
    path = str(tmp_path / "named.keras")
    tiny_model.class_names = NAMES
    tiny_model.save(path)
    reloaded = keras.saving.load_model(path)  # safe_mode is on by default
    assert reloaded.class_names == NAMES
    image = tmp_path / "a.png"
    image.write_bytes(tf.io.encode_png(tf.zeros((32, 32, 3), tf.uint8)).numpy())
    assert main(["predict", path, str(image), "--json", "--top-k", "5"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert sorted(row["labels"]) == sorted(NAMES)
    assert [NAMES[c] for c in row["classes"]] == row["labels"]


def test_a_model_without_class_names_saves_none(tiny_model, tmp_path):
    path = str(tmp_path / "plain.keras")
    tiny_model.save(path)
    assert getattr(keras.saving.load_model(path), "class_names", None) is None


def test_a_training_run_saves_its_class_names_in_model_keras(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--image-size", "16", "--batch-size", "16", "--steps", "2",
                 "--warmup-steps", "1", "--no-export", "--output", str(out)]) == 0
    labels = (out / "labels.txt").read_text().split()
    assert labels == [str(i) for i in range(10)]  # the digits
    assert keras.saving.load_model(str(out / "model.keras")).class_names == labels
