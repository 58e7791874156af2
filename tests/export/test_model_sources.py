"""`keras-vit predict MODEL IMAGE...` on every kind of model, and reading an .npz's
architecture from its shapes."""
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

import keras_vit
from export.model_sources import (MAX_IMAGE_FILE_BYTES, model_kind, predict,
                                  read_image_files)
from keras_vit.checkpoint_architecture import checkpoint_architecture
from keras_vit.checkpoints import CheckpointError
from tests import reference_vit
from tests.conftest import TINY, perturb
from training.cli import main


def _write_images(tmp_path, count=2, size=(40, 24)):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = str(tmp_path / f"img{i}.png")
        Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def run_dir(tmp_path):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY))
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "model.keras"))
    (run / "labels.txt").write_text("\n".join(["ant", "bee", "cat", "dog", "eel"]) + "\n")
    return str(run), model


def _reference(model, paths, labels):
    """Expected top-k via keras_vit.preprocess_image and the model, independently."""
    import tensorflow as tf
    images = np.stack([keras_vit.preprocess_image(tf.io.read_file(p), 32).numpy() for p in paths])
    logits = np.asarray(model(images), np.float64)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return [[labels[i] for i in np.argsort(-p)[:3]] for p in probs], np.sort(probs)[:, ::-1][:, :3]


def test_predict_run_dir_keras_file_and_json(run_dir, tmp_path, capsys):
    run, model = run_dir
    paths = _write_images(tmp_path)
    want_labels, want_probs = _reference(model, paths, ["ant", "bee", "cat", "dog", "eel"])
    assert main(["predict", run, *paths, "--top-k", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert [r["file"] for r in rows] == paths
    assert [r["labels"] for r in rows] == want_labels
    np.testing.assert_allclose([r["probabilities"] for r in rows], want_probs, atol=1e-6)
    assert main(["predict", os.path.join(run, "model.keras"), paths[0], "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{paths[0]}: ") and line.count(",") == 1  # labels unknown: ids


def test_predict_export_dir_matches_the_keras_model(run_dir, tmp_path, capsys):
    """The export's own graph and the Keras path give the same answer (one preprocessing);
    the older --model-dir form still works."""
    from export import export_saved_model
    run, model = run_dir
    version = export_saved_model(model, str(tmp_path / "models"), name="tiny",
                                 labels=["ant", "bee", "cat", "dog", "eel"])
    paths = _write_images(tmp_path)
    keras_rows = predict(run, paths, top_k=3)
    served_rows = predict(version, paths, top_k=3)
    assert [r["labels"] for r in served_rows] == [r["labels"] for r in keras_rows]
    np.testing.assert_allclose([r["probabilities"] for r in served_rows],
                               [r["probabilities"] for r in keras_rows], atol=1e-5)
    assert main(["predict", "--model-dir", version, *paths]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{paths[0]}: {keras_rows[0]['labels'][0]} ")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    for bad, message in ((empty, f"image {empty} is empty"),
                         (notes, f"invalid input: {notes} is not a decodable image")):
        err = _one_line_error(capsys, ["predict", version, paths[0], str(bad)])
        assert err.startswith(f"keras-vit predict: error: {message}"), err


def test_predict_npz_with_and_without_architecture(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(0), dim=192, heads=3, mlp=768,
                                           layers=12, patch=16, grid=(2, 2), num_classes=4)
    path = str(tmp_path / "ckpt.npz")
    np.savez(path, **params)
    paths = _write_images(tmp_path, 1)
    import tensorflow as tf
    pixels = keras_vit.preprocess_image(tf.io.read_file(paths[0]), 32).numpy()
    logits = reference_vit.forward(params, pixels[None].astype(np.float64), heads=3)[0]
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    inferred = predict(path, paths, top_k=4)[0]
    named = predict(path, paths, top_k=4, architecture="ViT_Ti16")[0]
    assert inferred["classes"] == list(np.argsort(-want))
    np.testing.assert_allclose(inferred["probabilities"], np.sort(want)[::-1], atol=1e-4)
    assert named["classes"] == inferred["classes"]
    np.testing.assert_allclose(named["probabilities"], inferred["probabilities"], atol=1e-6)


def test_checkpoint_architecture_from_shapes(tmp_path):
    rng = np.random.default_rng(0)
    cases = [
        (dict(patch=8, dim=32, mlp=64, heads=4, layers=3, grid=(4, 4), num_classes=7),
         dict(patch_size=8, hidden_size=32, mlp_size=64, num_heads=4, num_layers=3,
              num_classes=7, classifier="token", image_size=32, channels=3)),
        (dict(patch=4, dim=32, mlp=48, heads=2, layers=1, grid=(3, 3), classifier="gap",
              representation=16),
         dict(patch_size=4, hidden_size=32, mlp_size=48, num_heads=2, num_layers=1,
              num_classes=5, classifier="gap", image_size=12, representation_size=16,
              channels=3)),
        (dict(patch=1, dim=32, mlp=64, heads=4, layers=2, grid=(2, 2), resnet_stages=(1, 2)),
         dict(patch_size=1, hidden_size=32, mlp_size=64, num_heads=4, num_layers=2,
              num_classes=5, classifier="token", image_size=16, resnet_stages=(1, 2),
              resnet_width=1)),
    ]
    for i, (make, want) in enumerate(cases):
        path = str(tmp_path / f"c{i}.npz")
        np.savez(path, **reference_vit.make_checkpoint(rng, **make))
        assert checkpoint_architecture(path) == want
    path = str(tmp_path / "wide.npz")
    np.savez(path, **reference_vit.make_checkpoint(rng, grid=(2, 3)))
    with pytest.raises(CheckpointError, match="not a square grid; give the image size"):
        checkpoint_architecture(path)
    assert checkpoint_architecture(path, image_size=(16, 24))["image_size"] == (16, 24)


def test_model_kind(run_dir, tmp_path):
    run, _ = run_dir
    assert model_kind(run) == "run"
    assert model_kind(os.path.join(run, "model.keras")) == "keras"
    assert model_kind("grpc://host:8500") == model_kind("http://host:8501") == "server"
    with pytest.raises(ValueError, match="neither model.keras"):
        model_kind(str(tmp_path))


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in captured.err, captured.err
    return err


def test_predict_bad_inputs_are_one_line_errors(run_dir, tmp_path, capsys):
    run, _ = run_dir
    good = _write_images(tmp_path, 1)[0]
    missing = str(tmp_path / "missing.png")
    err = _one_line_error(capsys, ["predict", run, missing])
    assert err == f"keras-vit predict: error: cannot read image {missing}: No such file or " \
                  "directory"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    err = _one_line_error(capsys, ["predict", run, good, str(text)])
    assert err.startswith(f"keras-vit predict: error: invalid input: {text} is not a "
                          "decodable image (JPEG, PNG, BMP, GIF): unsupported image format "
                          "(allowed: JPEG, PNG, GIF, BMP)")
    err = _one_line_error(capsys, ["predict", str(tmp_path / "nope.keras"), good])
    assert "model not found: " + str(tmp_path / "nope.keras") in err
    (tmp_path / "weights.txt").write_text("x")
    err = _one_line_error(capsys, ["predict", str(tmp_path / "weights.txt"), good])
    assert "cannot tell what model" in err
    err = _one_line_error(capsys, ["predict", good])
    assert "usage: predict MODEL IMAGE..." in err
    err = _one_line_error(capsys, ["predict", run, good, "--top-k", "0"])
    assert "--top-k must be positive" in err
    (tmp_path / "broken.keras").write_bytes(b"PK not a zip")
    err = _one_line_error(capsys, ["predict", str(tmp_path / "broken.keras"), good])
    assert f"cannot load {tmp_path / 'broken.keras'}" in err


def test_predict_refuses_an_image_over_the_size_limit_before_reading_it(run_dir, tmp_path,
                                                                       capsys):
    """A sparse file one byte over the limit (costs no disk): it was read whole before."""
    run, _ = run_dir
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(MAX_IMAGE_FILE_BYTES + 1)
    err = _one_line_error(capsys, ["predict", run, str(huge)])
    assert err == (f"keras-vit predict: error: image {huge} is {MAX_IMAGE_FILE_BYTES + 1} "
                   f"bytes, over the limit of {MAX_IMAGE_FILE_BYTES} bytes for an image file")


def test_predict_fifo_as_image_or_model_is_an_error_not_a_hang(run_dir, tmp_path, capsys):
    """Opening a FIFO blocks until a writer comes: predict hung on one before."""
    run, _ = run_dir
    good = _write_images(tmp_path, 1)[0]
    fifo_image, fifo_model = str(tmp_path / "image.png"), str(tmp_path / "model.keras")
    os.mkfifo(fifo_image)
    os.mkfifo(fifo_model)
    errors = []

    def read():
        try:
            read_image_files([fifo_image])
        except ValueError as error:
            errors.append(str(error))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(120)
    hung = reader.is_alive()
    if hung:  # release the blocked reader before failing
        with open(fifo_image, "wb"):
            pass
    assert not hung, "reading a FIFO image blocked"
    assert errors == [f"image {fifo_image} is not a regular file"]
    with pytest.raises(ValueError, match=f"model {fifo_model} is not a regular file"):
        model_kind(fifo_model)  # before anything opens it
    err = _one_line_error(capsys, ["predict", run, fifo_image])
    assert err == f"keras-vit predict: error: image {fifo_image} is not a regular file"
    err = _one_line_error(capsys, ["predict", fifo_model, good])
    assert err == f"keras-vit predict: error: model {fifo_model} is not a regular file"


HUB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "hub")


def test_predict_and_export_a_transformers_directory(tmp_path, capsys):
    """`keras-vit predict` / `export` take a transformers model directory: probabilities of
    transformers' own logits (tests/fixtures/hub), labels from its id2label."""
    reference = np.load(os.path.join(HUB, "reference.npz"))
    paths = []
    for i, image in enumerate(reference["images"]):
        paths.append(str(tmp_path / f"hub{i}.png"))
        Image.fromarray(image).save(paths[-1])
    directory = os.path.join(HUB, "transformers_vit")
    assert model_kind(directory) == "transformers"
    assert main(["predict", directory, *paths, "--top-k", "5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    logits = reference["transformers_vit"].astype(np.float64)
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    names = ["cat", "dog", "fish", "bird", "frog"]
    for row, p in zip(rows, want):
        assert row["classes"] == list(np.argsort(-p))
        assert row["labels"] == [names[i] for i in np.argsort(-p)]
        np.testing.assert_allclose(row["probabilities"], np.sort(p)[::-1], atol=1e-5)
    output = str(tmp_path / "hub.tflite")
    assert main(["export", directory, "--format", "litert", "--output", output]) == 0
    assert os.path.getsize(output) > 0
    assert main(["predict", directory, paths[0], "--model", "ViT_B16"]) == 2
    assert "names the architecture of an .npz" in capsys.readouterr().err


def test_predict_refuses_a_keras_model_with_nan_weights(tmp_path, capsys):
    # keras-vit predict printed "0 nan, 1 nan, ..." and exited 0.
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY))
    gamma = model.get_layer("encoder_norm").gamma
    gamma.assign(np.full(gamma.shape, np.nan, np.float32))
    path = str(tmp_path / "nan.keras")
    model.save(path)
    good = _write_images(tmp_path, 1)[0]
    err = _one_line_error(capsys, ["predict", path, good])
    assert err.startswith(f"keras-vit predict: error: {path}: 1 weight(s) hold NaN or infinite")
    assert "encoder_norm/gamma" in err


def test_predict_names_a_truncated_keras_file_corrupt(run_dir, tmp_path, capsys):
    run, _ = run_dir
    data = open(os.path.join(run, "model.keras"), "rb").read()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[:len(data) // 2])
    good = _write_images(tmp_path, 1)[0]
    err = _one_line_error(capsys, ["predict", str(path), good])
    assert err.startswith(f"keras-vit predict: error: cannot load {path}: not a readable "
                          ".keras file (corrupt or truncated?)"), err
    assert "not found" not in err


def test_export_info_nested_too_deeply_is_a_one_line_error(tmp_path):
    from export.saved_model import EXPORT_INFO, read_export_info
    os.makedirs(os.path.dirname(str(tmp_path / EXPORT_INFO)), exist_ok=True)
    (tmp_path / EXPORT_INFO).write_text("[" * 200_000)
    with pytest.raises(ValueError, match="nested too deeply") as info:
        read_export_info(str(tmp_path))
    assert str(info.value).startswith(str(tmp_path / EXPORT_INFO)) and "\n" not in str(info.value)
