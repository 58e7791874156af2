import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from tests.conftest import TINY, perturb, random_images, run_python


@pytest.mark.parametrize("options,shape", [
    ({}, (2, 5)),
    ({"classifier": "gap"}, (2, 5)),
    ({"representation_size": 16}, (2, 5)),
    ({"include_top": False}, (2, 32)),
    ({"include_top": False, "representation_size": 24}, (2, 24)),
    ({"include_preprocessing": False}, (2, 5)),
])
def test_output_shapes(options, shape):
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY, **options)
    assert model(random_images()).shape == shape
    assert model.output.dtype == "float32"


def test_gap_has_no_class_token():
    model = keras_vit.ViT(image_size=32, classifier="gap", **TINY)
    assert model.get_layer("posembed_input").pos_embedding.shape == (1, 16, 32)


def test_non_square_image_size():
    model = keras_vit.ViT(image_size=(32, 48), num_classes=3, **TINY)
    assert model.get_layer("posembed_input").grid_size == (4, 6)
    assert keras_vit.model_image_size(model) == (32, 48)
    assert model(random_images(1, 32, 48)).shape == (1, 3)


def test_fresh_head_is_zero_initialised():
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    np.testing.assert_array_equal(model(random_images()).numpy(), 0.0)


def test_runtime_resolution_in_eager_function_and_predict(tiny_model):
    for h, w in [(48, 48), (64, 40), (32, 32)]:
        assert tiny_model(random_images(2, h, w)).shape == (2, 5)
    dynamic = tf.function(tiny_model, input_signature=[tf.TensorSpec((None, None, None, 3))])
    static = tf.function(tiny_model, input_signature=[tf.TensorSpec((None, 32, 32, 3))])
    x = random_images()
    # Same size in: bit-identical to the plain (non-interpolating) path.
    np.testing.assert_array_equal(dynamic(x).numpy(), static(x).numpy())
    assert dynamic(random_images(1, 56, 24)).shape == (1, 5)
    assert tiny_model.predict(random_images(3, 40, 64), verbose=0).shape == (3, 5)


def test_runtime_resolution_equals_model_built_at_that_size(tiny_model, tmp_path):
    big = keras_vit.ViT(image_size=(48, 40), num_classes=5, **TINY)
    small_pos = tiny_model.get_layer("posembed_input").pos_embedding.numpy()
    for src, dst in zip(tiny_model.weights, big.weights):
        if "pos_embedding" in src.path:
            dst.assign(keras_vit.resize_position_embeddings(small_pos, (6, 5)))
        else:
            dst.assign(src.numpy())
    x = random_images(2, 48, 40)
    np.testing.assert_allclose(tiny_model(x).numpy(), big(x).numpy(), rtol=1e-6, atol=1e-6)


def test_gradients_reach_every_trainable_weight(tiny_model):
    model = keras_vit.ViT(image_size=32, num_classes=5, representation_size=8,
                          dropout_rate=0.1, drop_path_rate=0.1, **TINY)
    perturb(model)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(random_images(), training=True) ** 2)
    grads = tape.gradient(loss, model.trainable_weights)
    missing = [v.path for v, g in zip(model.trainable_weights, grads)
               if g is None or not np.any(g.numpy())]
    assert not missing


# Relative error of low-precision outputs against float32 (8 / 11 bits of mantissa; measured
# on the tiny model: bfloat16 0.4-0.7%, float16 0.07-0.08%).
PRECISION_TOLERANCE = {"mixed_bfloat16": 2e-2, "bfloat16": 2e-2, "mixed_float16": 3e-3}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16", "bfloat16"])
@pytest.mark.parametrize("include_top", [True, False])
def test_precision_policies_compute_the_float32_function(policy, include_top):
    """Same (perturbed) weights: the low-precision model's float32 outputs agree with the
    float32 model's within the precision's tolerance (a zero head would hide any error)."""
    kwargs = dict(image_size=32, num_classes=10, include_top=include_top, **TINY)
    reference = perturb(keras_vit.ViT(**kwargs), scale=0.1)
    x = random_images(8)
    want = reference(x).numpy()
    keras.config.set_dtype_policy(policy)
    model = keras_vit.ViT(**kwargs)
    model.set_weights(reference.get_weights())
    out = model(x)
    assert out.dtype == tf.float32
    got = out.numpy()
    error = np.abs(got - want).max() / np.abs(want).max()
    assert error < PRECISION_TOLERANCE[policy]
    assert np.abs(want).max() > 0.1  # the outputs are far from 0: the comparison means something
    if include_top:
        margin = np.sort(want, -1)[:, -1] - np.sort(want, -1)[:, -2]
        clear = margin > 4 * PRECISION_TOLERANCE[policy] * np.abs(want).max()
        np.testing.assert_array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains(policy):
    keras.config.set_dtype_policy(policy)
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(random_images(8), np.arange(8) % 5, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.get_layer("head").kernel.dtype == "float32"


def test_fit_on_tf_data_reduces_loss():
    model = keras_vit.ViT(image_size=32, num_classes=2, **TINY)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 64)
    images = np.where(labels[:, None, None, None] == 1, 200.0, 50.0) + rng.normal(
        0, 20, (64, 32, 32, 3))
    ds = tf.data.Dataset.from_tensor_slices((images.astype("float32"), labels)).batch(16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(ds, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 30, 32, 3), np.float32), "not a positive multiple of 8"),
    (np.zeros((2, 32, 32, 1), np.float32), "expected 3 channels"),
    (np.zeros((32, 32, 3), np.float32), "Expected shape \\(None, None, None, 3\\)"),
])
def test_bad_input_raises_value_error(tiny_model, bad, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(bad)


@pytest.mark.parametrize("kwargs,match", [
    ({"image_size": 36}, "not divisible by 8"),
    ({"image_size": 4}, "not divisible by 8"),
    ({"image_size": 0}, "must be positive"),
    ({"classifier": "mean"}, "classifier must be one of"),
    ({"num_heads": 5}, "not divisible by num_heads"),
    ({"dropout_rate": 1.5}, "dropout_rate must be in"),
    ({"weights": "model.onnx"}, "cannot load weights"),
    ({"weights": "model.pt"}, "pickled PyTorch checkpoints .* refused"),
])
def test_bad_arguments(kwargs, match):
    args = dict(image_size=32, **TINY)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        keras_vit.ViT(**args)


def test_hybrid_rejects_sizes_not_multiple_of_stride():
    with pytest.raises(ValueError, match="not divisible by 32"):
        keras_vit.R26_ViT_S32(image_size=48)


def test_keras_round_trip_in_fresh_process(tiny_model, tmp_path):
    path = str(tmp_path / "tiny.keras")
    tiny_model.save(path)
    x = random_images(2, 48, 32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", tiny_model(x).numpy())
    out = run_python(f"""
import numpy as np, keras, keras_vit
model = keras.saving.load_model({path!r})  # safe_mode is on by default
x = np.load({str(tmp_path / 'x.npy')!r})
print(np.abs(model(x).numpy() - np.load({str(tmp_path / 'y.npy')!r})).max())
""")
    assert float(out.strip().splitlines()[-1]) == 0.0


def test_weights_h5_round_trip(tiny_model, tmp_path):
    path = str(tmp_path / "tiny.weights.h5")
    tiny_model.save_weights(path)
    clone = keras_vit.ViT(image_size=32, num_classes=5, weights=path, **TINY)
    x = random_images()
    np.testing.assert_array_equal(clone(x).numpy(), tiny_model(x).numpy())


def test_model_export_saved_model(tiny_model, tmp_path):
    path = str(tmp_path / "exported")
    tiny_model.export(path, verbose=False)
    reloaded = tf.saved_model.load(path)
    x = random_images()
    np.testing.assert_allclose(reloaded.serve(x).numpy(), tiny_model(x).numpy(), atol=1e-5)
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
