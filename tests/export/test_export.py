"""TF Serving export: layout, atomicity, signatures, agreement, errors, verification, clients."""
import base64
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from export import ExportError, export_saved_model, verify_export
from keras_vit import model_at_resolution
from export import client
from export.saved_model import keras_probabilities
from export.warmup import sample_image
from tests.conftest import TINY, perturb

LABELS = ["ant", "bee", "cat", "dog", "eel"]


@pytest.fixture
def model():
    return perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)


@pytest.fixture
def exported(model, tmp_path):
    """An export of ``model`` a test may change (its own directory)."""
    return export_saved_model(model, str(tmp_path / "models"), name="tiny", labels=LABELS,
                              top_k=3)


@pytest.fixture(scope="module")
def shared_export(tmp_path_factory):
    """(model, version directory, the version loaded) for the tests that only read an export:
    one export for the module (each costs its tracing and warm-up), never written to."""
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)
    path = export_saved_model(model, str(tmp_path_factory.mktemp("served") / "models"),
                              name="tiny", labels=LABELS, top_k=3)
    return model, path, tf.saved_model.load(path)


def _jpeg(h, w, seed):
    return tf.io.encode_jpeg(sample_image(h, w, seed)).numpy()


def _png(h, w, seed):
    return tf.io.encode_png(sample_image(h, w, seed)).numpy()


def test_layout_versions_and_models_config(model, tmp_path, exported):
    base = str(tmp_path / "models")
    assert exported == os.path.join(base, "tiny", "1")
    for item in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests"):
        assert os.path.exists(os.path.join(exported, item))
    assert oct(os.stat(exported).st_mode & 0o777) == "0o755"
    second = export_saved_model(model, base, name="tiny")
    assert second.endswith(os.path.join("tiny", "2"))
    export_saved_model(model, base, name="other")
    config = open(os.path.join(base, "models.config")).read()
    assert config.count("config {") == 2 and 'name: "tiny"' in config and 'name: "other"' in config
    with pytest.raises(ExportError, match="already exists"):
        export_saved_model(model, base, name="tiny", version=1)
    assert export_saved_model(model, base, name="tiny", version=1, overwrite=True) == exported


def test_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    import export.warmup

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export.warmup, "write_warmup", broken)
    base = tmp_path / "models"
    with pytest.raises(ExportError, match="nothing was written: RuntimeError: disk full"):
        export_saved_model(model, str(base), name="tiny")
    assert os.listdir(base / "tiny") == [".export.lock"]  # no version, no temporary directory


def test_signatures_and_agreement_with_keras(shared_export):
    model, _, loaded = shared_export
    assert set(loaded.signatures) == {"serving_default", "serving_images"}
    images = [_jpeg(32, 32, 1), _png(50, 70, 2), _jpeg(20, 90, 3)]
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(images))
    assert set(out) == {"probabilities", "scores", "classes", "labels"}
    assert out["probabilities"].dtype == tf.float32 and out["classes"].dtype == tf.int32
    assert out["scores"].shape == (3, 3) and out["labels"].dtype == tf.string
    want = keras_probabilities(model, images)
    np.testing.assert_allclose(out["probabilities"].numpy(), want, atol=1e-6)
    assert not np.allclose(want, want[0])  # outputs depend on the image
    top = np.argsort(-want, axis=1)[:, :3]
    np.testing.assert_array_equal(out["classes"].numpy(), top)
    assert [lab.decode() for lab in out["labels"].numpy()[0]] == [LABELS[i] for i in top[0]]
    # Float pixels of any size: the same preprocessing.
    pixels = tf.io.decode_png(images[1])[None]
    out2 = loaded.signatures["serving_images"](images=tf.cast(pixels, tf.float32))
    np.testing.assert_allclose(out2["probabilities"].numpy()[0], want[1], atol=1e-6)


@pytest.mark.parametrize("payload,match", [
    (b"", "empty image"),
    (b"\xff\xd8garbage", r"image 0: unsupported image format \(allowed: JPEG, PNG, GIF, BMP\)"),
    (b"\xff\xd8\xffgarbage", "Invalid JPEG|corrupt|Error"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image 0: corrupt PNG: no IHDR header")])
def test_corrupt_or_empty_bytes_fail_with_invalid_argument(shared_export, payload, match):
    loaded = shared_export[2]
    with pytest.raises(tf.errors.InvalidArgumentError, match=match):
        loaded.signatures["serving_default"](image_bytes=tf.constant([payload]))


def test_mixed_precision_export_outputs_float32(tmp_path):
    keras.config.set_dtype_policy("mixed_bfloat16")
    m = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY), scale=0.1)
    path = export_saved_model(m, str(tmp_path / "m"), name="mixed")
    out = tf.saved_model.load(path).signatures["serving_default"](
        image_bytes=tf.constant([_jpeg(32, 32, 0)]))
    assert out["probabilities"].dtype == tf.float32


def test_export_at_new_resolution(model, tmp_path):
    path = export_saved_model(model, str(tmp_path / "m"), name="hires", image_size=48)
    big = model_at_resolution(model, 48)
    assert big.get_layer("posembed_input").grid_size == (6, 6)
    image = _png(48, 48, 5)
    out = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant([image]))
    np.testing.assert_allclose(out["probabilities"].numpy(), keras_probabilities(big, [image]),
                               atol=1e-6)
    # The same as the original model interpolating at run time on 48-px input.
    pixels = tf.cast(tf.io.decode_png(image)[None], tf.float32)
    runtime = tf.nn.softmax(model(pixels)).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), runtime, atol=1e-5)


def _nodes(version_dir):
    """Every node of the SavedModel's graph and function library."""
    from tensorflow.core.protobuf import saved_model_pb2
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0].graph_def
    return list(graph.node) + [n for f in graph.library.function for n in f.node_def]


@pytest.mark.parametrize("precision,atol", [("float32", 1e-6), ("bfloat16", 2e-2)])
def test_frozen_export(model, tmp_path, precision, atol):
    default = export_saved_model(model, str(tmp_path / "m"), name="plain", labels=LABELS,
                                 top_k=3)
    path = export_saved_model(model, str(tmp_path / "m"), name="fast", labels=LABELS, top_k=3,
                              frozen=True, precision=precision)
    nodes = _nodes(path)
    assert not {n.op for n in nodes} & {"VarHandleOp", "ReadVariableOp"}  # no variables
    assert {"VarHandleOp", "ReadVariableOp"} <= {n.op for n in _nodes(default)}
    const_dtypes = {tf.dtypes.as_dtype(n.attr["dtype"].type).name for n in nodes
                    if n.op == "Const"}
    assert ("bfloat16" in const_dtypes) == (precision == "bfloat16")
    report = verify_export(path, model=model)
    assert report["ok"], report["failures"]
    assert report["precision"] == precision and report["frozen"]
    plain_signatures = tf.saved_model.load(default).signatures
    fast_signatures = tf.saved_model.load(path).signatures
    assert set(fast_signatures) == set(plain_signatures)
    for name in plain_signatures:
        assert fast_signatures[name].structured_outputs.keys() == \
            plain_signatures[name].structured_outputs.keys()
    # A small test set: probabilities within tolerance, the same top-1 wherever it is clear.
    images = [_jpeg(32, 32, seed) for seed in range(24)]
    out = fast_signatures["serving_default"](image_bytes=tf.constant(images))
    want = keras_probabilities(model, images)
    got = out["probabilities"].numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=atol)
    top2 = np.sort(want, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > atol
    assert clear.sum() >= 12
    np.testing.assert_array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_frozen_export_too_large_leaves_nothing(model, tmp_path, monkeypatch):
    import export.frozen
    monkeypatch.setattr(export.frozen, "MAX_FROZEN_BYTES", 1000)
    with pytest.raises(ValueError, match="over the 2 GiB limit.*frozen=False"):
        export_saved_model(model, str(tmp_path / "m"), name="big", frozen=True)
    assert not os.path.exists(tmp_path / "m" / "big" / "1")
    with pytest.raises(ValueError, match="precision must be one of"):
        export_saved_model(model, str(tmp_path / "m"), name="big", precision="int8")


def test_verify_passes_on_a_good_export(shared_export, monkeypatch):
    model, exported, _ = shared_export
    monkeypatch.chdir(os.path.dirname(os.path.dirname(exported)))
    report = verify_export(os.path.join("tiny", "1"), model=model)  # a relative path
    assert report["ok"], report["failures"]
    assert report["warmup_records"] == 2
    assert report["max_abs_diff"] < 1e-5
    assert report["signatures"]["serving_default"]["inputs"]["image_bytes"] == \
        {"dtype": "string", "shape": [-1]}


def _bad_export(tmp_path, name, fn, signature="serving_default", spec=None):
    module = tf.Module()
    module.fn = tf.function(fn, input_signature=[spec or tf.TensorSpec([None], tf.string,
                                                                       name="image_bytes")])
    path = str(tmp_path / name)
    tf.saved_model.save(module, path, signatures={signature: module.fn})
    return path


def _outputs(n):
    probs = tf.ones([n, 5]) / 5
    return {"probabilities": probs, "scores": probs[:, :3],
            "classes": tf.zeros([n, 3], tf.int32)}


def test_verify_fails_on_py_function(tmp_path):
    def fn(image_bytes):
        n = tf.py_function(lambda b: b.shape[0], [image_bytes], tf.int32)
        return _outputs(tf.reshape(n, []))
    report = verify_export(_bad_export(tmp_path, "py", fn))
    assert not report["ok"]
    assert any("py_function" in f for f in report["failures"])
    assert any("missing signature 'serving_images'" in f for f in report["failures"])


def test_verify_fails_on_jit_compile(tmp_path):
    inner = tf.function(lambda x: x * 2.0, jit_compile=True)

    def fn(image_bytes):
        out = _outputs(tf.shape(image_bytes)[0])
        out["probabilities"] = inner(out["probabilities"])
        return out
    report = verify_export(_bad_export(tmp_path, "xla", fn))
    assert any("jit_compile" in f for f in report["failures"]), report["failures"]


def test_verify_fails_on_broken_warmup(model, exported):
    path = os.path.join(exported, "assets.extra", "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(b"this is not a PredictionLog")
    report = verify_export(exported, model=model)
    assert not report["ok"]
    assert any(f.startswith("warm-up record 1") for f in report["failures"]), report["failures"]


class _SessionServer:
    """A tiny TF-Serving-like REST endpoint that runs the export through the session
    loader (the path TF Serving uses), for testing the clients against real outputs."""

    def __init__(self, version_dir):
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], version_dir)
        self.lock = threading.Lock()

    def predict(self, signature, images):
        sig = self.meta.signature_def[signature]
        names = sorted(sig.outputs)
        with self.lock:
            values = self.sess.run([sig.outputs[n].name for n in names],
                                   {sig.inputs["image_bytes"].name: images})
        return dict(zip(names, values))


def _rest_server(session_server):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            images = [base64.b64decode(i["b64"]) for i in body["instances"]]
            try:
                out = session_server.predict(body.get("signature_name", "serving_default"),
                                             images)
            except tf.errors.InvalidArgumentError as error:
                data, code = json.dumps({"error": error.message}).encode(), 400
            else:
                rows = [{k: (v[i].tolist() if v.dtype.kind != "O" else
                             [s.decode() for s in v[i]]) for k, v in out.items()}
                        for i in range(len(images))]
                data, code = json.dumps({"predictions": rows}).encode(), 200
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_rest_client_against_session_loader_server(shared_export):
    model, exported, _ = shared_export
    server = _rest_server(_SessionServer(exported))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        images = [_jpeg(32, 32, 7), _png(40, 24, 8)]
        rows = client.predict_rest(url, images, model="tiny")
        want = keras_probabilities(model, images)
        for row, probs in zip(rows, want):
            assert row["classes"] == list(np.argsort(-probs)[:3])
            assert row["labels"][0] == LABELS[int(np.argmax(probs))]
            assert row["scores"][0] == pytest.approx(float(probs.max()), abs=1e-6)
        with pytest.raises(client.ServingError, match="(?s)server error 400.*empty image"):
            client.predict_rest(url, [b""], model="tiny")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(client.ServingError, match="cannot reach"):
        client.predict_rest(url, [b"x"], model="tiny", timeout=2)


def _grpc_server(session_server):
    """A gRPC PredictionService running the export through the session loader; (server,
    port), started."""
    import grpc
    from concurrent import futures
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            images = list(tf.make_ndarray(request.inputs["image_bytes"]))
            try:
                out = session_server.predict(request.model_spec.signature_name, images)
            except tf.errors.InvalidArgumentError as error:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
            response = predict_pb2.PredictResponse()
            for key, value in out.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_grpc_client_against_session_loader_server(shared_export):
    model, exported, _ = shared_export
    server, port = _grpc_server(_SessionServer(exported))
    try:
        images = [_jpeg(32, 32, 9)]
        rows = client.predict_grpc(f"127.0.0.1:{port}", images, model="tiny")
        probs = keras_probabilities(model, images)[0]
        assert rows[0]["classes"] == list(np.argsort(-probs)[:3])
        assert rows[0]["labels"][0] == LABELS[int(np.argmax(probs))]
        with pytest.raises(client.ServingError, match="(?s)INVALID_ARGUMENT.*empty image"):
            client.predict_grpc(f"127.0.0.1:{port}", [b""], model="tiny")
    finally:
        server.stop(0)


def test_export_and_predict_cli(model, tmp_path, capsys):
    from training.cli import main
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    base = str(tmp_path / "models")
    assert main(["export", model_path, "--output", base, "--name", "cli",
                 "--labels", str(tmp_path / "labels.txt"), "--max-pixels", "2000"]) == 0
    version = os.path.join(base, "cli", "1")
    assert main(["export", model_path, "--verify", version]) == 0
    assert "verify" in capsys.readouterr().out
    image = tmp_path / "x.jpg"
    image.write_bytes(_jpeg(32, 32, 4))
    assert main(["predict", str(image), "--model-dir", version]) == 0
    assert str(image) in capsys.readouterr().out
    (tmp_path / "big.jpg").write_bytes(_jpeg(40, 60, 4))
    assert main(["predict", str(tmp_path / "big.jpg"), "--model-dir", version]) == 2
    assert "error: invalid input: image 0: 60x40 JPEG is 2400 pixels, " \
        "over the limit of 2000 pixels (max_pixels)\n" in capsys.readouterr().err
    assert main(["export", model_path, "--output", base, "--name", "cli", "--frozen",
                 "--precision", "bfloat16"]) == 0
    assert main(["export", model_path, "--verify", os.path.join(base, "cli", "2")]) == 0
    assert "precision bfloat16, frozen" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "missing.keras")]) == 2
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    assert main(["predict", str(not_an_image), "--model-dir", version]) == 2
    assert "error: invalid input" in capsys.readouterr().err


def test_verify_compares_only_with_the_model_the_version_came_from(model, tmp_path, capsys):
    from training.cli import main
    run = tmp_path / "run"
    run.mkdir()
    other = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), seed=5,
                    scale=0.1)
    other.save(str(run / "model.keras"))  # the run's model.keras is not the exported model
    version = export_saved_model(model, str(run / "export"), name="tiny")
    assert main(["export", "--verify", version]) == 0
    assert "is not the one this version was exported from: outputs not compared" in \
        capsys.readouterr().out
    assert main(["export", str(run / "model.keras"), "--verify", version]) == 1
    assert "FAIL: the model given is not the one this version was exported from" in \
        capsys.readouterr().out
    model.save(str(run / "model.keras"))
    assert main(["export", "--verify", version]) == 0
    assert "outputs compared with the model in" in capsys.readouterr().out


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_variables_export_holds_each_weight_once(model, tmp_path, precision):
    """Each weight is stored and loaded once: ExportArchive.track stored them twice."""
    path = export_saved_model(model, str(tmp_path), name="tiny", precision=precision,
                              warmup=False)
    served = model if precision == "float32" else keras_vit.inference_model(model, precision)
    stored = [(key, shape) for key, shape
              in tf.train.list_variables(os.path.join(path, "variables", "variables"))
              if key.endswith("VARIABLE_VALUE")]
    assert len(stored) == len(served.weights)
    assert sum(int(np.prod(shape)) for _, shape in stored) == served.count_params()
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
        handles = [op for op in graph.get_operations() if op.type == "VarHandleOp"]
    assert len(handles) == len(served.weights)
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    outputs = tf.saved_model.load(path).signatures["serving_images"](images=tf.constant(images))
    expected = tf.nn.softmax(model(images, training=False)).numpy()
    tolerance = 1e-6 if precision == "float32" else 2e-2
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=tolerance)


def test_export_labels_default_to_the_models_class_names(model, tmp_path):
    """A published ImageNet head or a transformers config labels the model
    (model.class_names); the export serves those labels without labels=."""
    model.class_names = LABELS
    path = export_saved_model(model, str(tmp_path), name="tiny", warmup=False)
    images = np.random.default_rng(3).uniform(0, 255, (1, 32, 32, 3)).astype("float32")
    outputs = tf.saved_model.load(path).signatures["serving_images"](images=tf.constant(images))
    classes = outputs["classes"].numpy()[0]
    assert [label.decode() for label in outputs["labels"].numpy()[0]] == [
        LABELS[i] for i in classes]


def _with_nan_weight(model):
    weight = model.weights[-3]
    value = keras.ops.convert_to_numpy(weight).copy()
    value.flat[0] = np.nan
    weight.assign(value)
    return model, weight.path


def test_export_refuses_non_finite_weights(model, tmp_path, capsys):
    model, path = _with_nan_weight(model)
    base = tmp_path / "models"
    with pytest.raises(ExportError, match=rf"model 'tiny' has non-finite weights \(NaN or inf\) "
                                          rf"in 1 variable\(s\), first {path}: nothing"):
        export_saved_model(model, str(base), name="tiny")
    assert not (base / "tiny" / "1").exists()
    from training.cli import main
    model.save(str(tmp_path / "nan.keras"))
    assert main(["export", str(tmp_path / "nan.keras"), "--output", str(base)]) == 2
    err = capsys.readouterr().err
    # The .keras loader refuses the file first (keras_vit.weights.load_keras_model).
    assert err == (f"keras-vit export: error: {tmp_path / 'nan.keras'}: 1 weight(s) hold NaN "
                   "or infinite values; the model is not used: 'encoder_norm/beta'\n")
    assert not (base / "tiny" / "1").exists()


def test_verify_fails_on_non_finite_outputs(model, tmp_path, monkeypatch):
    """NaN is not "> atol": a served NaN, and a Keras model whose own outputs are NaN, fail."""
    def fn(image_bytes):
        out = _outputs(tf.shape(image_bytes)[0])
        out["probabilities"] = out["probabilities"] * np.nan
        return out
    report = verify_export(_bad_export(tmp_path, "nan", fn))
    assert "served probabilities are not finite (NaN or inf) on 2 of 2 images" in \
        report["failures"], report["failures"]
    model, _ = _with_nan_weight(model)
    import export.saved_model
    monkeypatch.setattr(export.saved_model, "check_finite_weights", lambda m: None)
    version = export_saved_model(model, str(tmp_path / "models"), name="tiny")
    report = verify_export(version, model=model)
    assert not report["ok"]
    assert report["failures"] == ["served probabilities are not finite (NaN or inf) on 2 of "
                                  "2 images"], report["failures"]


def test_max_batch_cli_option(model, tmp_path, capsys):
    """--max-batch N: the export refuses N + 1 images, its warm-up and verification fit N,
    and predict --model-dir sends more images than that in requests of N."""
    from training.cli import main
    model_path = str(tmp_path / "m.keras")
    model.save(model_path)
    base = str(tmp_path / "models")
    assert main(["export", model_path, "--output", base, "--name", "one", "--max-batch",
                 "1"]) == 0
    version = os.path.join(base, "one", "1")
    assert main(["export", model_path, "--verify", version]) == 0
    assert "warm-up records replayed: 2" in capsys.readouterr().out
    serve = tf.saved_model.load(version).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="request of 2 images, over the "
                                                             "limit of 1 images a request"):
        serve(image_bytes=tf.constant([_jpeg(8, 8, 0)] * 2))
    files = []
    for i in range(3):
        files.append(str(tmp_path / f"{i}.jpg"))
        (tmp_path / f"{i}.jpg").write_bytes(_jpeg(32, 32, i))
    assert main(["predict", *files, "--model-dir", version, "--json"]) == 0
    assert [row["file"] for row in json.loads(capsys.readouterr().out)["predictions"]] == files
    with pytest.raises(SystemExit):
        main(["export", model_path, "--max-batch", "0"])
    assert "--max-batch: must be a positive integer, got '0'" in capsys.readouterr().err
    assert main(["export", model_path, "--format", "onnx", "--max-batch", "4"]) == 2
    assert "--max-batch is for --format savedmodel only" in capsys.readouterr().err
