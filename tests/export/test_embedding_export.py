"""Headless towers (a model without a head, e.g. a DINOv2 image tower loaded with
include_top=False) through the TF Serving export: an ``embedding`` output instead of
softmax / top-k / labels, the verification, the clients and ``keras-vit predict``."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from export import client, export_saved_model
from export.saved_model import keras_outputs
from export.warmup import sample_image
from tests.conftest import REPO
from training.cli import main

FAMILY = os.path.join(REPO, "tests", "fixtures", "family")
CONFIGS = json.load(open(os.path.join(FAMILY, "metadata.json")))["configs"]


def tower(case="dinov2_reg", **kwargs):
    """A family fixture (16 wide, 2 heads) without its head: its output is an embedding."""
    return keras_vit.from_timm(os.path.join(FAMILY, f"{case}.safetensors"),
                               config=CONFIGS[case], num_heads=2, include_top=False, **kwargs)


def _jpeg(h, w, seed):
    return tf.io.encode_jpeg(sample_image(h, w, seed)).numpy()


@pytest.fixture(scope="module")
def model():
    return tower()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    return export_saved_model(model, str(tmp_path_factory.mktemp("models")), name="tower")


def test_headless_tower_serves_its_embedding(model, exported):
    loaded = tf.saved_model.load(exported)
    images = [_jpeg(32, 32, 1), tf.io.encode_png(sample_image(50, 70, 2)).numpy()]
    want = keras_outputs(model, images)
    assert want.shape == (2, 16) and np.abs(want[0] - want[1]).max() > 0.1
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert set(out) == {"embedding"} and out["embedding"].dtype == tf.float32
    np.testing.assert_allclose(out["embedding"].numpy(), want, rtol=0, atol=1e-5)
    pixels = tf.cast(tf.io.decode_png(images[1])[None], tf.float32)
    out = loaded.signatures["serving_images"](images=pixels)
    assert set(out) == {"embedding"}
    np.testing.assert_allclose(out["embedding"].numpy()[0], want[1], rtol=0, atol=1e-5)


def test_embedding_comparison_of_the_verification_can_fail(model, exported):
    """What --verify compares for an embedding export (its whole run, session loader
    included, is the CLI test below): the served answer within 1e-4 of the largest value of
    the model's own embeddings, and not of another tower's."""
    from export.verify import TOLERANCES, _embedding_failures, expected_signatures
    assert expected_signatures(16, "embedding")["serving_default"][1] == {
        "embedding": ("float32", [-1, 16])}
    images = [_jpeg(32, 32, 5), _jpeg(60, 40, 6)]
    served = tf.saved_model.load(exported).signatures["serving_default"](
        image_bytes=tf.constant(images))
    predict = {"embedding": served["embedding"].numpy().tolist()}
    failures, diff = _embedding_failures(predict, keras_outputs(model, images),
                                         TOLERANCES["float32"])
    assert failures == [] and diff < 1e-5
    other = keras_outputs(tower("dinov2"), images)  # same width, other weights
    failures, diff = _embedding_failures(predict, other, TOLERANCES["float32"])
    assert failures[0].startswith("served and Keras embeddings differ by") and diff > 0.1


def test_labels_are_refused_for_a_headless_tower(model, tmp_path):
    with pytest.raises(ValueError, match="labels given for model .* which has no head "
                                         r"\(its output is a 16-wide embedding"):
        export_saved_model(model, str(tmp_path), labels=[str(i) for i in range(16)])
    assert os.listdir(tmp_path) == []


def test_predict_prints_each_embeddings_width_and_norm(model, exported, tmp_path, capsys):
    image = tmp_path / "x.jpg"
    image.write_bytes(_jpeg(40, 30, 4))
    norm = float(np.linalg.norm(keras_outputs(model, [image.read_bytes()])[0]))
    keras_file = str(tmp_path / "tower.keras")
    model.save(keras_file)
    for source in (exported, keras_file):
        assert main(["predict", source, str(image)]) == 0
        assert capsys.readouterr().out == f"{image}: embedding of 16 values, L2 norm " \
                                          f"{norm:.4g}\n"
    assert main(["predict", exported, str(image), "--json"]) == 0
    row, = json.loads(capsys.readouterr().out)["predictions"]
    assert row["dimension"] == 16 and row["norm"] == pytest.approx(norm, rel=1e-5)
    np.testing.assert_allclose(row["embedding"],
                               keras_outputs(model, [image.read_bytes()])[0], atol=1e-5)


def test_rest_and_grpc_clients_read_embeddings(model, exported):
    from tests.export.test_export import _grpc_server, _rest_server, _SessionServer
    session = _SessionServer(exported)
    images = [_jpeg(32, 32, 7), _jpeg(20, 44, 8)]
    rest = _rest_server(session)
    try:
        rows = client.predict_rest(f"http://127.0.0.1:{rest.server_address[1]}", images,
                                   model="tower")
    finally:
        rest.shutdown()
        rest.server_close()
    grpc, port = _grpc_server(session)
    try:
        grpc_rows = client.predict_grpc(f"127.0.0.1:{port}", images, model="tower")
    finally:
        grpc.stop(0)
    for answer in (rows, grpc_rows):
        np.testing.assert_allclose([row["embedding"] for row in answer],
                                   keras_outputs(model, images), atol=1e-5)


@pytest.mark.parametrize("answer, problem", [
    ([[1.0, 2.0]], "1 rows of 'embedding' for 2 images"),
    ([[1.0, 2.0], [1.0]], "embeddings of different widths"),
    ([[1.0, float("nan")], [1.0, 2.0]], "row 0: embedding has non-finite values"),
    ([[1.0, "2"], [1.0, 2.0]], "row 0: embedding .* is not a list of numbers"),
    (["ab", [1.0, 2.0]], "row 0: embedding ab is not a list of numbers"),
])
def test_hostile_embedding_answers_are_one_line_errors(answer, problem):
    with pytest.raises(client.ServingError, match="unexpected answer from srv: " + problem):
        client._embedding_rows(answer, 2, "srv")


def test_cli_exports_and_verifies_a_headless_hub_checkpoint(tmp_path, capsys):
    """``keras-vit export`` on a timm hub directory of a tower saved without its head (timm
    ``num_classes=0``), then ``--verify``: the embedding signature, compared with the model."""
    from safetensors.numpy import load_file, save_file
    directory = tmp_path / "tower"
    directory.mkdir()
    tensors = load_file(os.path.join(FAMILY, "siglip.safetensors"))
    save_file({k: v for k, v in tensors.items() if not k.startswith("head.")},
              str(directory / "model.safetensors"))
    config = dict(CONFIGS["siglip"], num_classes=0, model_args={"num_heads": 2},
                  pretrained_cfg={"mean": [0.5] * 3, "std": [0.5] * 3,
                                  "input_size": [3, 32, 32], "interpolation": "bicubic"})
    (directory / "config.json").write_text(json.dumps(config))
    base = str(tmp_path / "models")
    assert main(["export", str(directory), "--output", base, "--name", "siglip"]) == 0
    capsys.readouterr()
    assert main(["export", str(directory), "--verify", os.path.join(base, "siglip", "1")]) == 0
    out = capsys.readouterr().out
    assert "serving_default: (image_bytes string[-1]) -> (embedding float32[-1, 16])" in out
    assert "max |served - Keras| embedding, over its largest |value|" in out
    (tmp_path / "labels.txt").write_text("\n".join(f"class {i}" for i in range(16)))
    assert main(["export", str(directory), "--output", base, "--labels",
                 str(tmp_path / "labels.txt")]) == 2
    assert "has no head" in capsys.readouterr().err
