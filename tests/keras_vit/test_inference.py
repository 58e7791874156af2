"""keras_vit.inference_model: folded LayerNorm / attention scale, serving dtypes."""
import keras
import numpy as np
import pytest

import keras_vit
from keras_vit.layers import TransformerBlock
from keras_vit.layers.transformer import fold_block_weights
from tests import reference_vit
from tests.conftest import TINY, perturb, random_images


def _rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_folded_block_equals_block():
    x = np.random.default_rng(1).normal(size=(3, 7, 32)).astype("float32")
    block = TransformerBlock(4, 64)
    block.build(x.shape)
    # LayerNorm gamma/beta far from 1/0, so a missed fold cannot pass.
    for i, variable in enumerate(block.weights):
        variable.assign(np.random.default_rng(i).normal(1.0 if "gamma" in variable.path else 0.0,
                                                        0.5, variable.shape))
    folded = TransformerBlock(4, 64, folded=True)
    folded.build(x.shape)
    assert [w.path.split("/")[-1] for w in folded.weights] == [
        "qkv_kernel", "qkv_bias", "out_kernel", "out_bias", "mlp1_kernel", "mlp1_bias",
        "mlp2_kernel", "mlp2_bias"]
    folded.set_weights(fold_block_weights(block.get_weights(), 4))
    assert _rel_err(folded(x).numpy(), block(x).numpy()) < 1e-5
    assert TransformerBlock.from_config(folded.get_config()).folded


def test_float32_copy_matches_the_original_checkpoint_reference(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(3), grid=(4, 4), scale=0.3)
    path = str(tmp_path / "ckpt.npz")
    np.savez(path, **params)
    model = keras_vit.ViT(image_size=32, num_classes=5, weights=path, **TINY)
    fast = keras_vit.inference_model(model)
    assert all(layer.folded for layer in fast.layers if isinstance(layer, TransformerBlock))
    assert not any("ln1" in w.path for w in fast.weights)
    x = random_images(4)
    want = reference_vit.forward(params, x, heads=4)
    assert _rel_err(fast.predict(x, verbose=0), want) < 2e-5  # as tight as the model itself
    assert model.count_params() - fast.count_params() == 2 * 2 * 2 * 32  # 2 LNs x 2 blocks


@pytest.mark.parametrize("resnet", [False, True])
def test_bfloat16_copy_stores_bfloat16_and_keeps_top1(resnet):
    kwargs = dict(TINY, patch_size=1, resnet_stages=(1, 1)) if resnet else TINY
    model = perturb(keras_vit.ViT(image_size=32, num_classes=10, **kwargs), scale=0.3)
    fast = keras_vit.inference_model(model, "bfloat16")
    dtypes = {w.path: w.dtype for w in fast.weights}
    assert dtypes["encoderblock_0/qkv_kernel"] == "bfloat16"
    assert dtypes["head/kernel"] == "float32"
    x = random_images(16, seed=4)
    want, got = model.predict(x, verbose=0), fast.predict(x, verbose=0)
    assert got.dtype == np.float32
    assert _rel_err(got, want) < 5e-2  # bfloat16 has 8 bits of mantissa
    margin = np.sort(want, -1)[:, -1] - np.sort(want, -1)[:, -2]
    clear = margin > 0.1 * np.abs(want).max()
    assert clear.sum() >= 8
    np.testing.assert_array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear])


def test_copy_round_trips_through_keras_file(tmp_path):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY))
    fast = keras_vit.inference_model(model)
    fast.save(tmp_path / "fast.keras")
    again = keras.saving.load_model(tmp_path / "fast.keras")
    x = random_images(2)
    np.testing.assert_allclose(again.predict(x, verbose=0), fast.predict(x, verbose=0),
                               rtol=1e-6, atol=1e-6)


def test_bad_arguments():
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    with pytest.raises(ValueError, match="dtype must be one of"):
        keras_vit.inference_model(model, "int8")
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not a keras_vit model"):
        keras_vit.inference_model(plain)
