"""oneDNN's weight cache (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``), the README's recommended
setting for a TF Serving process: the default (variables) export then runs the frozen export's
kernels at the variables export's memory.

The cache keeps the first weights each kernel saw, so it is only correct where kernels are not
shared and weights do not change. The served test loads three models (float32 and bfloat16
variables exports, the frozen bfloat16 export) in one process, as a server holding several
models does, runs both signatures at several batch sizes in turn and compares every answer
with the model's own probabilities (and the bfloat16 variables export with the frozen one).
The same process also shows that the setting took effect: a second model called eagerly
there computes with the first model's cached weights (why the README restricts the setting
to servers and graph-only inference, and why training refuses it).
"""
import json

import numpy as np
import pytest

import keras_vit
from export import export_saved_model
from keras_vit.inference import class_probabilities
from keras_vit.runtime import FROZEN_WEIGHTS_VARIABLE
from tests.conftest import TINY, perturb, random_images, run_python

_SERVE = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras_vit
from tests.conftest import TINY, perturb, random_images

def serve(version_dir, requests):
    sess = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
    def run(signature, value):
        sig = meta.signature_def[signature]
        return sess.run(sig.outputs["probabilities"].name,
                        {next(iter(sig.inputs.values())).name: value})
    return sess, run

paths, jpegs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
sessions = {name: serve(path, None) for name, path in paths.items()}  # both loaded first
answers = {name: {} for name in paths}
for batch in (2, 3, 1):
    for name, (sess, run) in sessions.items():  # interleaved between the two models
        answers[name][f"images {batch}"] = run("serving_images",
                                               random_images(batch, seed=batch)).tolist()
for name, (sess, run) in sessions.items():
    answers[name]["bytes"] = run("serving_default",
                                 [open(f, "rb").read() for f in jpegs]).tolist()

# The setting is in force here: eager kernels are shared between models, so a second model
# called eagerly computes with the first one's cached weights, while its graph is right.
first = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY), seed=7)
second = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY), seed=8)
x = random_images(4)
first(x, training=False)
eager = second(x, training=False).numpy()
graph = second.predict(x, verbose=0)
answers["eager_vs_graph"] = float(np.abs(eager - graph).max())
answers["graph"] = graph.tolist()
from keras_vit.inference import class_probabilities
answers["reference"] = class_probabilities(second, x).tolist()
print("@@" + json.dumps(answers))
"""


def _serve(paths, jpegs, cache):
    env = {"TF_ENABLE_ONEDNN_OPTS": "1", FROZEN_WEIGHTS_VARIABLE: "1" if cache else "0"}
    out = run_python(_SERVE.replace("sys.argv[1]", repr(json.dumps(paths)))
                     .replace("sys.argv[2]", repr(json.dumps(jpegs))), env=env)
    return json.loads(out.split("@@")[-1])


def test_served_variables_exports_are_right_under_the_weight_cache(tmp_path):
    import tensorflow as tf

    from export.warmup import sample_image
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)
    paths = {precision: export_saved_model(model, str(tmp_path), name=precision,
                                           precision=precision, warmup=False)
             for precision in ("float32", "bfloat16")}
    paths["frozen"] = export_saved_model(model, str(tmp_path), name="frozen", frozen=True,
                                         precision="bfloat16", warmup=False)
    jpegs = []
    for i in range(2):
        path = tmp_path / f"{i}.jpg"
        path.write_bytes(tf.io.encode_jpeg(sample_image(32, 32, i), quality=95).numpy())
        jpegs.append(str(path))
    decoded = np.stack([tf.io.decode_jpeg(open(f, "rb").read()).numpy() for f in jpegs])
    expected = {f"images {b}": class_probabilities(model, random_images(b, seed=b))
                for b in (2, 3, 1)}
    expected["bytes"] = class_probabilities(model, decoded.astype("float32"))

    cached = _serve(paths, jpegs, cache=True)
    assert cached["eager_vs_graph"] > 1e-2  # the cache is on in that process
    tolerance = {"float32": 1e-5, "bfloat16": 2e-2}
    for precision, answers in ((p, cached[p]) for p in ("float32", "bfloat16")):
        for request, want in expected.items():
            got = np.asarray(answers[request])
            assert np.abs(got - want).max() < tolerance[precision], (precision, request)
            assert (got.argmax(-1) == want.argmax(-1)).all(), (precision, request)

    for request in expected:  # the frozen graph's kernels: the same numbers, bit for bit
        np.testing.assert_array_equal(cached["bfloat16"][request], cached["frozen"][request])

    plain = _serve(paths, jpegs, cache=False)
    assert plain["eager_vs_graph"] < 1e-5  # without the cache eager and graph agree
    # Under the cache graphs are right, and so is the reference every check compares with.
    np.testing.assert_allclose(cached["graph"], plain["graph"], atol=1e-5)
    np.testing.assert_allclose(cached["reference"], plain["reference"], atol=1e-6)
    for request in expected:  # the float32 export computes the same with and without it
        np.testing.assert_allclose(cached["float32"][request], plain["float32"][request],
                                   atol=1e-6)


@pytest.mark.parametrize("command", ["training.cli", "export.cli"])  # keras-vit, python -m export
def test_the_commands_run_without_the_setting(tmp_path, command):
    # A hybrid's ResNet stage repeats convolutions of one shape; called eagerly they share one
    # kernel, which under the setting keeps the first convolution's weights. The command drops
    # the setting before TensorFlow reads it, so in its process even eager calls are right.
    import tensorflow as tf
    model = perturb(keras_vit.ViT(image_size=64, num_classes=5, patch_size=1, hidden_size=32,
                                  mlp_size=64, num_heads=4, num_layers=1, resnet_stages=(3, 3),
                                  name="hybrid"), scale=0.2)
    path = str(tmp_path / "hybrid.keras")
    model.save(path)
    image = random_images(1, 64, 64)[0].astype("uint8")
    png = tmp_path / "x.png"
    png.write_bytes(tf.io.encode_png(image).numpy())
    want = class_probabilities(model, image[None].astype("float32"))[0]
    env = {"TF_ENABLE_ONEDNN_OPTS": "1", FROZEN_WEIGHTS_VARIABLE: "1"}
    out = run_python(
        f"import json, os, sys, keras\nfrom {command} import main\n"
        f"rc = main(['predict', {path!r}, {str(png)!r}, '--json'])\n"
        "from tests.conftest import random_images\n"
        f"model, x = keras.saving.load_model({path!r}), random_images(2, 64, 64)\n"
        "eager, graph = model(x, training=False).numpy(), model.predict(x, verbose=0)\n"
        "print('@@' + json.dumps({'rc': rc, 'left': 'TF_ONEDNN_ASSUME_FROZEN_WEIGHTS' in "
        "os.environ, 'eager_vs_graph': float(abs(eager - graph).max())}))", env=env)
    printed, _, checks = out.partition("@@")
    assert json.loads(checks) == {"rc": 0, "left": False, "eager_vs_graph": pytest.approx(
        0, abs=1e-6)}
    row = json.loads(printed)["predictions"][0]
    got = np.zeros(5)
    got[row["classes"]] = row["probabilities"]
    np.testing.assert_allclose(got, want, atol=1e-6)
