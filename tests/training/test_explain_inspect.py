"""`keras-vit explain`, `inspect`, `evaluate --confusion`, the training curves: PNGs that
decode at their size, and one-line errors."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_vit
from tests import reference_vit
from tests.conftest import TINY, perturb
from training import figures
from training.cli import main
from training.commands.evaluate import per_class_accuracy


def _size(name):
    width, height = figures.FIGURE_SIZES[name]
    return int(round(width * figures.DPI)), int(round(height * figures.DPI))


def _decodes_at(path, name):
    with Image.open(path) as image:
        image.load()  # decodes the whole file
        assert image.format == "PNG"
        assert image.size == _size(name), (path, image.size)


@pytest.fixture
def run_dir(tmp_path):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=10, name="tiny", **TINY))
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "model.keras"))
    (run / "labels.txt").write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    return str(run)


@pytest.fixture
def image_path(tmp_path):
    path = str(tmp_path / "photo.jpg")
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _npz(tmp_path, name="ckpt.npz", **kwargs):
    path = str(tmp_path / name)
    np.savez(path, **reference_vit.make_checkpoint(np.random.default_rng(0), **kwargs))
    return path


def test_explain_writes_the_figure(run_dir, image_path, tmp_path, capsys):
    out = str(tmp_path / "explain.png")
    assert main(["explain", run_dir, image_path, "--output", out, "--top-k", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: digit ")
    _decodes_at(out, "explain")


def test_explain_a_gap_checkpoint(image_path, tmp_path, capsys):
    npz = _npz(tmp_path, classifier="gap")
    out = str(tmp_path / "gap.png")
    assert main(["explain", npz, image_path, "--output", out]) == 0
    _decodes_at(out, "explain")


def test_inspect_writes_three_panels_at_a_new_non_square_size(tmp_path, image_path, capsys):
    npz = _npz(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    os.rename(image_path, images / "photo.jpg")
    out = str(tmp_path / "figs")
    assert main(["inspect", npz, "--output", out, "--image-size", "24", "40",
                 "--images", str(images)]) == 0
    assert sorted(os.listdir(out)) == ["attention_distance.png", "embedding_filters.png",
                                      "position_similarity.png"]
    for name, kind in (("attention_distance.png", "distance"),
                       ("embedding_filters.png", "filters"),
                       ("position_similarity.png", "similarity")):
        _decodes_at(os.path.join(out, name), kind)


def test_inspect_a_hybrid_skips_the_rgb_filters(tmp_path, capsys):
    npz = _npz(tmp_path, patch=1, grid=(2, 2), resnet_stages=(1,))
    out = str(tmp_path / "figs")
    assert main(["inspect", npz, "--output", out]) == 0  # built-in sample images
    assert "embedding_filters.png skipped: model 'vit' is a hybrid" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["attention_distance.png", "position_similarity.png"]


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, captured.err
    return err


def test_bad_inputs_are_one_line_errors(run_dir, image_path, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    missing = str(tmp_path / "missing.jpg")
    assert _one_line_error(capsys, ["explain", run_dir, missing, "--output", out]) == \
        f"keras-vit explain: error: cannot read image {missing}: No such file or directory"
    err = _one_line_error(capsys, ["explain", run_dir, image_path, "--output",
                                   str(tmp_path / "x.jpg")])
    assert err.endswith(f"output must be a .png file, got {tmp_path / 'x.jpg'}")
    err = _one_line_error(capsys, ["explain", run_dir, image_path, "--output",
                                   str(tmp_path / "no" / "x.png")])
    assert "directory " + str(tmp_path / "no") + " does not exist" in err
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello")
    err = _one_line_error(capsys, ["explain", run_dir, str(notes), "--output", out])
    assert f"{notes} is not a decodable image" in err
    assert not os.path.exists(out)
    err = _one_line_error(capsys, ["inspect", run_dir, "--output", str(tmp_path / "f"),
                                   "--image-size", "30"])
    assert "image size (30, 30) is not a multiple of 8" in err
    err = _one_line_error(capsys, ["inspect", run_dir, "--output", str(tmp_path / "f"),
                                   "--image-size", "400"])  # ~5 GB of attention maps before
    assert "attention maps at 400x400 (2501 tokens) take about 764 MiB an image" in err
    assert not os.path.exists(tmp_path / "f")
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _one_line_error(capsys, ["inspect", run_dir, "--output", str(tmp_path / "f"),
                                   "--images", str(empty)])
    assert f"--images {empty} has no image files" in err
    err = _one_line_error(capsys, ["inspect", str(tmp_path / "nothing"), "--output",
                                   str(tmp_path / "f")])
    assert "model not found: " + str(tmp_path / "nothing") in err
    (empty / "broken.png").write_bytes(b"\x89PNG not really")
    err = _one_line_error(capsys, ["inspect", run_dir, "--output", str(tmp_path / "f"),
                                   "--images", str(empty)])
    assert f"{empty / 'broken.png'} is not a decodable image" in err
    headless = str(tmp_path / "features.keras")
    keras_vit.ViT(image_size=32, include_top=False, **TINY).save(headless)
    err = _one_line_error(capsys, ["explain", headless, image_path, "--output", out])
    assert err.endswith(f"{headless} has no classification head (include_top=False)")
    assert not os.path.exists(out)


def test_per_class_accuracy_and_confusion():
    """A model whose prediction is its input's argmax: the confusion matrix is known."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False)])
    model.layers[0].set_weights([np.eye(3, dtype="float32")])
    predicted = np.array([0, 0, 1, 2, 2, 1])
    labels = np.array([0, 1, 1, 2, 2, 2])
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.eye(3, dtype="float32")[predicted], labels)).batch(4)
    accuracy, matrix = per_class_accuracy(model, dataset, 4)
    np.testing.assert_array_equal(matrix, [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 2, 0],
                                           [0, 0, 0, 0]])
    np.testing.assert_allclose(accuracy[:3], [1.0, 0.5, 2 / 3])
    assert np.isnan(accuracy[3])


def test_evaluate_prints_per_class_accuracy_and_writes_the_confusion(run_dir, tmp_path,
                                                                     capsys):
    out = str(tmp_path / "confusion.png")
    assert main(["evaluate", run_dir, "--dataset", "digits", "--confusion", out]) == 0
    printed = capsys.readouterr().out
    lines = printed[printed.index("per-class accuracy:"):].splitlines()
    assert len([line for line in lines if line.startswith("  ")]) == 10
    assert sum(int(line.split("(")[1].split()[0]) for line in lines[1:11]) == 360
    _decodes_at(out, "confusion")
    err = _one_line_error(capsys, ["evaluate", run_dir, "--dataset", "digits",
                                   "--confusion", str(tmp_path / "c.pdf")])
    assert err.endswith(f"output must be a .png file, got {tmp_path / 'c.pdf'}")


def test_training_curves_from_the_tensorboard_logs(tmp_path):
    log_dir = tmp_path / "logs" / "train"
    writer = tf.summary.create_file_writer(str(log_dir))
    with writer.as_default():
        for step, (loss, acc) in enumerate([(2.0, 0.125), (1.0, 0.5), (0.5, 0.75)], start=1):
            tf.summary.scalar("loss", loss, step=10 * step)
            tf.summary.scalar("accuracy", acc, step=10 * step)
    writer.flush()
    series = figures.read_scalars(str(log_dir))
    assert series["loss"] == ([10, 20, 30], [2.0, 1.0, 0.5])
    assert series["accuracy"] == ([10, 20, 30], [0.125, 0.5, 0.75])
    path = figures.write_training_curves(str(tmp_path))
    assert path == str(tmp_path / "curves.png")
    _decodes_at(path, "curves")
    assert figures.write_training_curves(str(tmp_path / "no_logs")) is None
