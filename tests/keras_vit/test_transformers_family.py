"""The ViT family from transformers model directories (what ``save_pretrained`` writes):
DeiT (with and without teacher, ``DeiTModel``), DINOv2 (with and without registers, and their
classifiers), CLIP image towers (``CLIPVisionModel``, ``...WithProjection``, a full
``CLIPModel``) and SigLIP image towers (``SiglipVisionModel``, a full ``SiglipModel``),
loaded with ``from_preset``: the outputs transformers computes from the same [0, 255] images
normalised by the directory's ``preprocessor_config.json`` (fixtures written by
``benchmarks/transformers_family.py fixtures``; no torch needed here)."""
import json
import os
import shutil

import numpy as np
import pytest

import keras
import keras_vit
from keras_vit.layers import TokenPooling
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "transformers_family")
CASES = json.load(open(os.path.join(FIXTURES, "metadata.json")))["cases"]
REFERENCE = np.load(os.path.join(FIXTURES, "reference.npz"))
IMAGES = REFERENCE["images"].astype("float32")
# Relative error max|diff| / max|ref| against transformers' float32 outputs (measured:
# <= 1.1e-6).
TOLERANCE = 1e-5
GELU = {"gelu": "erf", "quick_gelu": "quick", "gelu_pytorch_tanh": "tanh"}
_MODELS = {}


def _path(case):
    return os.path.join(FIXTURES, case)


def _model(case):
    """The fixture's model (built once per module: each test reads it only)."""
    if case not in _MODELS:
        _MODELS[case] = keras_vit.from_preset(_path(case))
    return _MODELS[case]


def _rel_err(out, case):
    ref = REFERENCE[case]
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_family_member_computes_transformers_outputs(case):
    model = _model(case)
    assert _rel_err(model(IMAGES), case) < TOLERANCE
    # ... with the numerics of its config (the epsilon is invisible at O(1) variances).
    block = model.get_layer("encoderblock_0").get_config()
    facts = CASES[case]
    assert (block["gelu"], block["layer_norm_epsilon"]) == (GELU[facts["hidden_act"]],
                                                            facts["layer_norm_eps"])


@pytest.mark.parametrize("case, wrong", [
    ("clip_vision", "erf"),  # QuickGELU (OpenAI's CLIP)
    ("clip_projection", "quick"),  # a GELU CLIP (LAION's)
    ("siglip_vision", "erf"),  # tanh GELU
])
def test_tolerance_is_tighter_than_the_other_gelu(case, wrong):
    model = keras_vit.from_preset(_path(case), gelu=wrong)
    assert _rel_err(model(IMAGES), case) > 2 * TOLERANCE


@pytest.mark.parametrize("case, size", [("deit", 48), ("dinov2", 24), ("dinov2", 48),
                                        ("dinov2_reg", 24), ("dinov2_reg", 48)])
def test_another_image_size_resizes_position_embeddings_as_transformers(case, size):
    # Built for the size: loading resizes with transformers' interpolate_pos_encoding
    # (PyTorch bicubic; antialiased for DINOv2 with registers).
    images, ref = REFERENCE[f"images@{size}"].astype("float32"), REFERENCE[f"{case}@{size}"]
    model = keras_vit.from_preset(_path(case), image_size=size)
    assert float(np.abs(model(images).numpy() - ref).max() / np.abs(ref).max()) < TOLERANCE
    # (the in-graph resize of a model built for 32 px, aligned-corners bilinear, is not it)
    other = _model(case)(images).numpy()
    assert float(np.abs(other - ref).max() / np.abs(ref).max()) > 10 * TOLERANCE


def test_dinov2_classifier_pools_class_token_and_patch_mean():
    # transformers: Linear(2 D) on [class token, mean of the patch tokens] (registers left out).
    pool = TokenPooling("token_gap", num_prefix_tokens=5)
    tokens = np.random.default_rng(0).normal(size=(2, 9, 4)).astype("float32")
    expected = np.concatenate([tokens[:, 0], tokens[:, 5:].mean(axis=1)], axis=-1)
    np.testing.assert_allclose(pool(tokens).numpy(), expected, rtol=1e-6)
    assert _model("dinov2_classifier").get_layer("head").kernel.shape == (32, 3)


@pytest.mark.parametrize("case, names", [
    ("deit", ["cat", "dog", "fish"]), ("deit_distilled", ["cat", "dog", "fish"]),
    ("dinov2_classifier", ["cat", "dog", "fish"]),
    ("dinov2_reg_classifier", ["cat", "dog", "fish"]), ("dinov2", []), ("clip", []),
    ("siglip", [])])
def test_labels_come_from_id2label(case, names):
    assert _model(case).class_names == names


@pytest.mark.parametrize("case, layers", [
    ("deit_distilled", {"head", "head_dist"}), ("dinov2_reg", set()),
    ("clip", {"pre_norm", "projection"}), ("siglip", {"pool"})])
def test_family_options_from_the_model_type(case, layers):
    model = _model(case)
    names = {layer.name for layer in model.layers}
    assert layers <= names
    encoder = model.get_layer("posembed_input")
    expected = {"deit_distilled": (True, True, 0, True), "dinov2_reg": (True, False, 4, False),
                "clip": (True, False, 0, True), "siglip": (False, False, 0, True)}[case]
    assert (encoder.class_token, encoder.distillation_token, encoder.num_register_tokens,
            encoder.embed_prefix) == expected
    if case == "clip":
        assert not model.get_layer("embedding").use_bias
        assert not model.get_layer("projection").use_bias
        assert not keras_vit.models.has_head(model)


def test_from_transformers_loads_a_tower_directory():
    # SigLIP's processor normalises with mean = std = 0.5, from_transformers' default.
    model = keras_vit.from_transformers(_path("siglip"))
    assert _rel_err(model(IMAGES), "siglip") < TOLERANCE


def test_token_gap_and_distillation_token_survive_a_keras_file(tmp_path):
    for case in ("dinov2_classifier", "deit"):
        path = str(tmp_path / f"{case}.keras")
        _model(case).save(path)
        loaded = keras.saving.load_model(path)
        assert _rel_err(loaded(IMAGES), case) < TOLERANCE


def _copy(tmp_path, case, **config):
    directory = tmp_path / case
    shutil.copytree(_path(case), directory)
    found = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(found, **config)))
    return str(directory)


def test_unsupported_model_type_names_what_is_supported(tmp_path):
    directory = _copy(tmp_path, "deit", model_type="beit")
    with pytest.raises(keras_vit.CheckpointError) as found:
        keras_vit.from_preset(directory)
    message = str(found.value)
    assert "\n" not in message and "config.json: model_type 'beit'" in message
    assert ("supported: clip, clip_vision_model, deit, dinov2, dinov2_with_registers, "
            "siglip, siglip_vision_model, vit") in message


def test_dinov2_swiglu_is_refused(tmp_path):
    directory = _copy(tmp_path, "dinov2", use_swiglu_ffn=True)
    with pytest.raises(keras_vit.CheckpointError, match="use_swiglu_ffn"):
        keras_vit.from_preset(directory)


def test_position_embeddings_without_a_grid_are_refused(tmp_path):
    # DINOv2 with registers: the class token's embedding is taken off the table when
    # loading; a table of that one entry leaves no grid (a one-line mismatch, no deep error).
    from safetensors.numpy import load_file, save_file
    from keras_vit.checkpoint_architecture import transformers_architecture
    directory = _copy(tmp_path, "dinov2_reg")
    args, _ = transformers_architecture(directory)
    path = os.path.join(directory, "model.safetensors")
    tensors = load_file(path)
    tensors["embeddings.position_embeddings"] = tensors["embeddings.position_embeddings"][:, :1]
    save_file(tensors, path)
    with pytest.raises(keras_vit.CheckpointMismatchError, match="leave no grid"):
        keras_vit.ViT(**args, weights=directory)
