"""The memory estimate that refuses image sizes no machine here can hold, before building."""
import pytest

import keras_vit
from keras_vit.model_ops import model_config
from keras_vit.variants import check_fits, estimate_memory
from tests.conftest import TINY


def test_estimate_of_a_huge_image_size_and_of_ordinary_ones():
    config = keras_vit.ViTConfig(**TINY)  # patch 8, width 32, 4 heads
    need = estimate_memory(config, 100_000)
    assert need["tokens"] == 12_500 ** 2 + 1
    assert need["position_embedding"] == need["tokens"] * 32 * 4
    assert need["activations"] >= 4 * need["tokens"] ** 2 * 4  # one layer's attention scores
    with pytest.raises(ValueError, match=r"image size 100000x100000 cannot fit: its "
                       r"156,250,001 tokens need at least 20\.0 GB for the position embedding "
                       r"and .* of activations for one image \(estimate\), more than the "
                       r"1\.0 GB of memory here"):
        check_fits(config, 100_000, memory=10 ** 9)
    for variant, size in (("ViT_B16", 384), ("ViT_H14", 518), ("R50_ViT_B16", 384)):
        check_fits(keras_vit.VARIANTS[variant], size, memory=2 * 10 ** 9)


def test_building_or_resizing_to_a_size_that_cannot_fit_is_refused_before_allocating():
    with pytest.raises(ValueError, match="image size 100000x100000 cannot fit"):
        keras_vit.ViT(image_size=100_000, num_classes=3, **TINY)
    model = keras_vit.ViT(image_size=32, num_classes=3, **TINY)
    with pytest.raises(ValueError, match="image size 100000x100000 cannot fit"):
        keras_vit.model_at_resolution(model, 100_000)
    assert model_config(model) == keras_vit.ViTConfig(**TINY)
