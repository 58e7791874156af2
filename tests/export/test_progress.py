"""Long work shows Keras's progress bar on stderr when stderr is a terminal (evaluation, a
LiteRT / ONNX conversion and its check, the verification of a TF Serving export) and writes
nothing when it is not (logs, pipes); stdout never gets it."""
import io
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from tests.conftest import TINY, perturb, random_images


class Terminal(io.StringIO):
    """A stderr that says it is a terminal (what a person's shell gives the command)."""

    def isatty(self):
        return True


@pytest.fixture(params=["terminal", "log"])
def stderr(request, monkeypatch):
    """sys.stderr for the test's body (pytest's capture sets its own when the call starts,
    so the stream is swapped in on first use)."""
    stream = Terminal() if request.param == "terminal" else io.StringIO()

    class Swap:
        def __enter__(self):
            monkeypatch.setattr(sys, "stderr", stream)
            return stream

        def __exit__(self, *exc):
            monkeypatch.undo()
    return Swap()


def _shown(stream):
    return isinstance(stream, Terminal)


def test_evaluation(stderr, capsys):
    from training.trainer import evaluate
    model = keras_vit.ViT(image_size=32, num_classes=10, **TINY)
    ds = tf.data.Dataset.from_tensor_slices((random_images(20), np.arange(20) % 10)).batch(8)
    with stderr as stream:
        evaluate(model, ds)
    text = stream.getvalue()
    assert ("3/Unknown" in text) == _shown(stream), text  # 3 batches counted
    assert text == "" or _shown(stream)
    assert capsys.readouterr().out == ""


def test_litert_conversion_and_check(stderr, tmp_path, capsys):
    from export import export_litert
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY))
    with stderr as stream:
        export_litert(model, str(tmp_path / "m.tflite"))
    text = stream.getvalue()
    assert ("2/2" in text) == _shown(stream), text  # converted, then checked
    assert "2/2" not in capsys.readouterr().out


def test_export_verification(tmp_path, monkeypatch):
    """On a terminal only: a verification starts a fresh TensorFlow process (seconds), and
    the quiet path is the one every other verification test takes."""
    from export import export_saved_model, verify_export
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY))
    version = export_saved_model(model, str(tmp_path), name="tiny")
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    assert verify_export(version, model=model)["ok"]
    monkeypatch.undo()
    assert "2/2" in stream.getvalue(), stream.getvalue()  # the session check, Keras's outputs
