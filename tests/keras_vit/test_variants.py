"""Every named variant builds with the paper's exact parameter count (224 px, 1000 classes)."""
import keras
import pytest

import keras_vit

EXPECTED = {
    "ViT_Ti16": 5_717_416, "ViT_S16": 22_050_664, "ViT_S32": 22_878_952,
    "ViT_B16": 86_567_656, "ViT_B32": 88_224_232, "ViT_L16": 304_326_632,
    "ViT_L32": 306_535_400, "ViT_H14": 632_045_800, "R26_ViT_S32": 36_431_912,
    "R50_ViT_B16": 98_659_112, "R50_ViT_L32": 328_994_856,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count(name):
    model = getattr(keras_vit, name)()
    assert model.count_params() == EXPECTED[name]
    assert model.output_shape == (None, 1000)


def test_b16_at_384_has_more_position_embeddings():
    assert keras_vit.ViT_B16(image_size=384).count_params() == 86_859_496


def test_variant_table_drives_every_builder():
    assert set(keras_vit.VARIANTS) == set(EXPECTED)
    for name in EXPECTED:
        assert getattr(keras_vit, name).__name__ == name
    keras.backend.clear_session()
