"""Operations on a model: rebuild (checked weight lists), another resolution, a new head,
the variables that skip weight decay."""
import keras
import numpy as np
import pytest

import keras_vit
from tests.conftest import TINY, perturb, random_images


def test_rebuild_refuses_weight_lists_that_do_not_match(tiny_model):
    """No silent zip truncation: a conversion that drops a weight is an error."""
    with pytest.raises(ValueError, match="layer 'encoderblock_0' has 12 weights in the copy "
                                         "but 11 were given"):
        keras_vit.rebuild(tiny_model, convert_weights=lambda layer, w: (
            w[:-1] if layer.name == "encoderblock_0" else w))
    with pytest.raises(ValueError, match="head/kernel has shape"):
        keras_vit.rebuild(tiny_model, convert_weights=lambda layer, w: (
            [w[0][:, :2], w[1]] if layer.name == "head" else w))
    copy = keras_vit.rebuild(tiny_model, name="copy")
    x = random_images()
    assert copy.name == "copy"
    np.testing.assert_array_equal(copy(x).numpy(), tiny_model(x).numpy())


@pytest.mark.parametrize("resnet", [False, True])
def test_model_at_resolution_equals_runtime_interpolation(resnet):
    kwargs = dict(TINY, patch_size=1, resnet_stages=(1, 1)) if resnet else TINY
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, **kwargs), scale=0.1)
    size = (48, 64)
    big = keras_vit.model_at_resolution(model, size)
    assert keras_vit.model_image_size(big) == size
    x = random_images(2, *size)
    np.testing.assert_allclose(big(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert keras_vit.model_at_resolution(model, 32) is model
    with pytest.raises(ValueError, match="not a multiple of"):
        keras_vit.model_at_resolution(model, 36)


def test_with_new_head_keeps_the_body_and_zeroes_the_head(tiny_model):
    new = keras_vit.with_new_head(tiny_model, 3)
    assert new.output_shape == (None, 3)
    np.testing.assert_array_equal(new.get_layer("head").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(new.get_layer("head").bias.numpy(), 0.0)

    def features(m):
        return keras.Model(m.input, m.get_layer("pool").output)(random_images()).numpy()
    np.testing.assert_array_equal(features(new), features(tiny_model))
    headless = keras_vit.ViT(image_size=32, include_top=False, **TINY)
    with pytest.raises(ValueError, match="has no head"):
        keras_vit.with_new_head(headless, 3)


def test_no_weight_decay_variables_match_adamw_exclusion():
    model = keras_vit.ViT(image_size=32, num_classes=3, representation_size=8,
                          resnet_stages=(1,), **dict(TINY, patch_size=1, num_layers=1))
    spared = {v.path for v in keras_vit.no_weight_decay_variables(model)}
    optimizer = keras.optimizers.AdamW(weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=keras_vit.NO_WEIGHT_DECAY)
    optimizer.build(model.trainable_variables)
    assert spared == {v.path for v in model.trainable_variables
                      if not optimizer._use_weight_decay(v)}
    names = {v.path.split("/")[-1] for v in keras_vit.no_weight_decay_variables(model)}
    assert names == {"bias", "gamma", "beta", "pos_embedding", "cls", "qkv_bias", "out_bias",
                     "mlp1_bias", "mlp2_bias", "ln1_gamma", "ln1_beta", "ln2_gamma",
                     "ln2_beta"}
