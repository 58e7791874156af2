"""LiteRT and ONNX files: each run with its own runtime and compared with the Keras model."""
import os

import numpy as np
import pytest

import keras_vit
from export import export_litert, export_onnx
from export.portable import QUANTIZATIONS, compare, verification_images, verify_file
from export.runtimes import litert_interpreter, onnx_session, run_litert, run_onnx
from tests.conftest import TINY, perturb, random_images
from training.cli import main


def _probabilities(model, images):
    logits = np.asarray(model(images, training=False), np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def _images(size=32):
    """Real digits (mostly dark backgrounds) and random pixels, raw [0, 255]."""
    return np.concatenate([verification_images(size, 4), random_images(2, size, size, seed=3)])


@pytest.fixture(scope="module")
def model():
    return perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.5)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    """{quantization or "onnx": path}, written once for the module."""
    out = tmp_path_factory.mktemp("portable")
    written = {None: str(out / "tiny.tflite"), "onnx": str(out / "tiny.onnx")}
    export_litert(model, written[None])
    export_onnx(model, written["onnx"])
    for quantization in QUANTIZATIONS:
        written[quantization] = str(out / f"tiny-{quantization}.tflite")
        export_litert(model, written[quantization], quantization=quantization)
    return written


def test_outputs_are_nontrivial(model):
    """What the comparisons below rely on: logits, pixels and channel order all matter."""
    images = _images()
    want = _probabilities(model, images)
    logits = np.asarray(model(images, training=False))
    assert np.abs(want - logits).max() > 1  # forgetting the softmax shows
    assert np.abs(want - _probabilities(model, images / 127.5 - 1)).max() > 0.1  # rescaling
    assert np.abs(want - _probabilities(model, images[..., ::-1])).max() > 0.1  # BGR
    assert np.abs(want - want.mean(0)).max() > 0.05  # the images are told apart


def test_litert_float32_matches_keras(model, files):
    interpreter = litert_interpreter(files[None])
    inp, = interpreter.get_input_details()
    out, = interpreter.get_output_details()
    assert "images" in inp["name"] and list(inp["shape_signature"]) == [-1, 32, 32, 3]
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    images = _images()
    got = run_litert(interpreter, images)
    np.testing.assert_allclose(got, _probabilities(model, images), atol=1e-5, rtol=0)
    got_one = run_litert(interpreter, images[2:3])  # one image, as on a phone
    np.testing.assert_allclose(got_one, _probabilities(model, images[2:3]), atol=1e-5, rtol=0)


def _tensor_dtypes(path):
    return {np.dtype(t["dtype"]).name for t in litert_interpreter(path).get_tensor_details()}


# Measured on this model: float16 3.5e-4, int8 8e-3; a file fed BGR or [-1, 1] is off by
# more than 0.13 (the verification's own TOLERANCES are looser: they cover trained models).
@pytest.mark.parametrize("quantization, stored, atol", [("float16", "float16", 2e-3),
                                                        ("dynamic_int8", "int8", 3e-2)])
def test_litert_quantized(model, files, quantization, stored, atol):
    path = files[quantization]
    assert stored in _tensor_dtypes(path) and stored not in _tensor_dtypes(files[None])
    assert os.path.getsize(path) < 0.7 * os.path.getsize(files[None])
    images = _images()
    want = _probabilities(model, images)
    got = run_litert(litert_interpreter(path), images)
    assert got.dtype == np.float32
    assert np.abs(got - want).max() <= atol
    np.testing.assert_array_equal(got.argmax(-1), want.argmax(-1))


def test_onnx_matches_keras(model, files):
    session = onnx_session(files["onnx"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    images = _images()
    got = run_onnx(session, images)  # a batch of 6: the batch size is free
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _probabilities(model, images), atol=1e-5, rtol=0)


def test_hybrid_converts(tmp_path):
    """The ResNet+ViT hybrid (weight-standardised convs, GroupNorm) through both converters."""
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, resnet_stages=(1, 1),
                                  name="hybrid", **dict(TINY, patch_size=1)), scale=0.5)
    images = _images()
    want = _probabilities(model, images)
    assert np.abs(want - want.mean(0)).max() > 0.02
    assert np.abs(want - _probabilities(model, images[..., ::-1])).max() > 0.05
    export_litert(model, str(tmp_path / "h.tflite"))
    export_onnx(model, str(tmp_path / "h.onnx"))
    got_litert = run_litert(litert_interpreter(str(tmp_path / "h.tflite")), images)
    got_onnx = run_onnx(onnx_session(str(tmp_path / "h.onnx")), images)
    np.testing.assert_allclose(got_litert, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(got_onnx, want, atol=1e-5, rtol=0)


def test_mixed_precision_model_is_exported_in_float32(tmp_path):
    import keras
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY), scale=0.5)
    keras.config.set_dtype_policy("float32")
    report = export_litert(model, str(tmp_path / "m.tflite"))
    assert report["ok"] and report["max_abs_diff"] < 1e-5
    images = _images()
    got = run_litert(litert_interpreter(str(tmp_path / "m.tflite")), images)
    float32 = keras_vit.inference_model(model, "float32", fold=False)
    np.testing.assert_allclose(got, _probabilities(float32, images), atol=1e-5, rtol=0)
    assert np.abs(got - _probabilities(model, images)).max() > 1e-4  # bfloat16 differs


def test_verification_catches_another_model(model, files):
    """verify_file must be able to fail: the file of one model checked against another."""
    assert verify_file(files["onnx"], model, "onnx")["ok"]
    other = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY), seed=1, scale=0.5)
    report = verify_file(files["onnx"], other, "onnx")
    assert not report["ok"] and "max probability difference" in report["problem"]


def test_compare_bounds_the_difference_and_top1_outside_ties():
    want = np.array([[0.5, 0.4, 0.1], [0.5004, 0.4996, 0.0]])
    tie_flipped = np.array([[0.5, 0.4, 0.1], [0.4996, 0.5004, 0.0]])
    report = compare(want, tie_flipped, 1e-3, tie=1e-3)
    assert report["ok"] and report["top1_agree"] == 1 and report["max_abs_diff"] < 1e-3
    report = compare(want, tie_flipped, 1e-3, tie=1e-4)  # the gap 8e-4 is no tie here
    assert not report["ok"] and report["problem"].startswith("top-1 differs on 1 image")
    report = compare(want, want[:, [1, 0, 2]], 0.2, tie=0.05)
    assert not report["ok"] and report["problem"].startswith("top-1 differs on 1 image")
    report = compare(want, want[:, [1, 0, 2]], 0.05, tie=0.2)
    assert not report["ok"] and report["problem"].startswith("max probability difference 0.1")
    assert not compare(want, np.full_like(want, np.nan), 0.05)["ok"]
    assert not compare(want, want[:, :2], 0.05)["ok"]


def test_failed_verification_writes_nothing(model, tmp_path, monkeypatch):
    import export.portable
    monkeypatch.setitem(export.portable.TOLERANCES, ("litert", "float16"), (0.0, 0.0))
    from export import ExportError
    with pytest.raises(ExportError, match="FAILED: max probability difference .* nothing was"):
        export_litert(model, str(tmp_path / "m.tflite"), quantization="float16")
    assert os.listdir(tmp_path) == []  # neither the file nor its staging copy
    # Nor the directories the export made for it.
    with pytest.raises(ExportError, match="nothing was"):
        export_litert(model, str(tmp_path / "new" / "sub" / "m.tflite"), quantization="float16")
    assert os.listdir(tmp_path) == []


def test_without_hard_links_the_file_is_published_and_never_overwrites(model, tmp_path,
                                                                     monkeypatch):
    """A filesystem that refuses os.link (some network and FUSE mounts): the file is still
    published, and a file that appeared meanwhile is still kept."""
    import export.portable
    from export import ExportError

    def no_hard_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(export.portable.os, "link", no_hard_links)
    target = tmp_path / "m.tflite"
    export_litert(model, str(target))
    assert target.stat().st_size > 0 and os.listdir(tmp_path) == ["m.tflite"]
    theirs = tmp_path / "theirs.tflite"
    _someone_writes_after_the_conversion(monkeypatch, theirs)
    with pytest.raises(ExportError, match="theirs.tflite already exists"):
        export_litert(model, str(theirs))
    assert theirs.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "theirs.tflite"]


def test_staging_files_of_a_killed_export_are_removed_by_the_next(model, tmp_path):
    """kill -9 during a file export leaves its hidden staging file; the next export into the
    directory removes it, and leaves those of live exports and of other hosts."""
    import socket
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    abandoned = f".tmp-{host}-{dead.pid}-k9xq_2ab.tflite"
    kept = [f".tmp-{host}-{os.getpid()}-l1vexpo_.tflite",  # a live export
            f".tmp-{host}x-{dead.pid}-0th3rhst.tflite",  # another host
            f".tmp-{host}-{dead.pid}-424242-abcdefgh.tflite",  # host "<ours>-<pid>"
            f".tmp-{host}-{dead.pid}-k9xq_2ab.onnx",  # another format's export
            f".tmp-{host}-99999999999999999999-abcdefgh.tflite",  # not a pid
            f".tmp-{host}-\u00b2-abcdefgh.tflite",  # a digit only to str.isdigit
            "notes.tflite"]
    for name in (abandoned, *kept):
        (tmp_path / name).write_bytes(b"part of a model")
    export_litert(model, str(tmp_path / "m.tflite"))
    assert sorted(os.listdir(tmp_path)) == sorted(["m.tflite", *kept])


def test_abandoned_staging_that_cannot_be_removed_does_not_stop_the_export(model, tmp_path,
                                                                          monkeypatch):
    import export.portable
    not_a_directory = tmp_path / "a.tflite"
    not_a_directory.write_bytes(b"")  # listing it fails (an OSError, as for no permission)
    assert export.portable.remove_abandoned_staging(str(not_a_directory), ".tflite") == []

    def not_permitted(path, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", path)

    import socket
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    theirs = tmp_path / f".tmp-{socket.gethostname()}-{dead.pid}-abcdefgh.tflite"
    theirs.write_bytes(b"someone else's, in a sticky directory")
    real_unlink = os.unlink
    monkeypatch.setattr(export.portable.os, "unlink",
                        lambda path, *args, **kwargs: not_permitted(path)
                        if path == str(theirs) else real_unlink(path, *args, **kwargs))
    export_litert(model, str(tmp_path / "b.tflite"))
    assert sorted(os.listdir(tmp_path)) == sorted(["a.tflite", "b.tflite", theirs.name])


def _someone_writes_after_the_conversion(monkeypatch, target):
    """Another process creates ``target`` between the early check and the publishing."""
    import export.portable
    convert = export.portable._convert

    def convert_then_someone_writes(*args):
        convert(*args)
        target.write_bytes(b"theirs")

    monkeypatch.setattr(export.portable, "_convert", convert_then_someone_writes)


def test_file_created_during_the_export_is_kept(model, tmp_path, monkeypatch):
    """The final rename never replaces a file that appeared after the early check."""
    from export import ExportError
    target = tmp_path / "m.onnx"
    _someone_writes_after_the_conversion(monkeypatch, target)
    with pytest.raises(ExportError, match="m.onnx already exists"):
        export_onnx(model, str(target))
    assert target.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["m.onnx"]


@pytest.fixture(scope="module")
def keras_file(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keras") / "tiny.keras")
    model.save(path)
    return path


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize("argv, words", [
    (["--format", "onnx", "--quantize", "int8"], ["--quantize int8", "--format litert only"]),
    (["--quantize", "float16"], ["--format litert only"]),
    (["--format", "litert", "--frozen"], ["--frozen", "--format savedmodel only"]),
    (["--format", "onnx", "--version", "2"], ["--version", "--format savedmodel only"]),
])
def test_cli_rejects_bad_combinations(keras_file, tmp_path, capsys, argv, words):
    assert main(["export", keras_file, "--output", str(tmp_path), *argv]) == 2
    _one_line_error(capsys, *words)
    assert os.listdir(tmp_path) == []


def test_cli_writes_verifies_and_never_overwrites(model, keras_file, tmp_path, capsys):
    target = tmp_path / "tiny-int8.tflite"
    target.write_bytes(b"mine")
    argv = ["export", keras_file, "--format", "litert", "--quantize", "int8",
            "--output", str(tmp_path)]
    assert main(argv) == 2
    _one_line_error(capsys, str(target), "already exists", "--overwrite")
    assert target.read_bytes() == b"mine" and os.listdir(tmp_path) == [target.name]

    assert main(argv + ["--overwrite"]) == 0
    out = capsys.readouterr().out
    assert f"exported {target}" in out and "top-1 agrees on 10/10 images" in out
    assert target.read_bytes() != b"mine"
    assert main(["export", keras_file, "--format", "litert", "--quantize", "int8",
                 "--verify", str(target)]) == 0
    assert "top-1 agrees on 10/10" in capsys.readouterr().out
    assert main(["export", keras_file, "--format", "litert", "--verify", str(target)]) == 1
    assert "for a quantised file pass --quantize" in capsys.readouterr().out

    onnx_path = tmp_path / "named.onnx"
    assert main(["export", keras_file, "--format", "onnx", "--output", str(onnx_path)]) == 0
    got = run_onnx(onnx_session(str(onnx_path)), _images())
    np.testing.assert_allclose(got, _probabilities(model, _images()), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fmt, name", [("litert", "junk.tflite"), ("onnx", "junk.onnx")])
def test_cli_verify_of_a_corrupt_file_is_one_line(keras_file, tmp_path, capsys, fmt, name):
    (tmp_path / name).write_bytes(b"not a model")
    assert main(["export", keras_file, "--format", fmt, "--verify", str(tmp_path / name)]) == 2
    _one_line_error(capsys, str(tmp_path / name), f"is not a {fmt} model")


@pytest.mark.parametrize("fmt,suffix", [("litert", ".tflite"), ("onnx", ".onnx")])
def test_non_finite_weights_are_refused_before_conversion(tmp_path, fmt, suffix):
    from export.portable import export_file
    from export.saved_model import ExportError
    model = perturb(keras_vit.ViT(image_size=32, num_classes=3, name="nan", **TINY))
    weight = model.weights[0]
    value = np.array(weight.numpy())
    value.flat[0] = np.inf
    weight.assign(value)
    path = str(tmp_path / f"m{suffix}")
    with pytest.raises(ExportError, match=rf"model 'nan' has non-finite weights \(NaN or inf\) "
                                          rf"in 1 variable\(s\), first {weight.path}: nothing"):
        export_file(model, path, fmt)
    assert os.listdir(tmp_path) == []


def test_cli_verify_of_a_file_that_loads_but_cannot_run_is_one_line(keras_file, tmp_path,
                                                                    capsys):
    """A LiteRT file whose graph only runs one image at a time: it loads, then LiteRT's
    RuntimeError at run time (a traceback before) is one line naming the file."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
    def one_image(images):
        return tf.nn.softmax(tf.reshape(images, [1, 32 * 32 * 3])[:, :5])

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [one_image.get_concrete_function()], one_image)
    path = tmp_path / "one.tflite"
    path.write_bytes(converter.convert())
    assert main(["export", keras_file, "--format", "litert", "--verify", str(path)]) == 2
    _one_line_error(capsys, str(path), "could not run it on images of shape (10, 32, 32, 3)")
