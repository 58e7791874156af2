"""The ViT family (DeiT, DeiT distilled, DeiT III, CLIP, DINOv2 with and without registers,
SigLIP, timm's average-pooled ViTs) loaded from timm files: the outputs timm computes
(fixtures written by ``benchmarks/family_parity.py fixtures``, no torch needed here), the
options read from the tensors and the config, and the model operations on them."""
import json
import os

import numpy as np
import pytest

import keras
import keras_vit
from keras_vit.inspection import attention_rollout, attention_weights
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "family")
METADATA = json.load(open(os.path.join(FIXTURES, "metadata.json")))
CONFIGS = METADATA["configs"]
REFERENCE = np.load(os.path.join(FIXTURES, "reference.npz"))
IMAGES = REFERENCE["images"].astype("float32")
# Relative error max|diff| / max|ref| against timm's float32 outputs (measured: <= 5e-7).
TOLERANCE = 1e-5


def _path(case):
    return os.path.join(FIXTURES, f"{case}.safetensors")


def _load(case, **kwargs):
    # The fixtures are 16 wide with 2 heads: a width timm's named ViTs do not have.
    return keras_vit.from_timm(_path(case), config=CONFIGS[case], num_heads=2, **kwargs)


def _rel_err(out, case):
    ref = REFERENCE[case]
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_family_member_computes_timms_outputs(case):
    assert _rel_err(_load(case)(IMAGES), case) < TOLERANCE


@pytest.mark.parametrize("case, options", [
    ("deit_distilled", dict(classifier="distilled")),
    ("deit3", dict(layer_scale=True, embed_prefix=False)),
    ("clip", dict(pre_norm=True, patch_bias=False, gelu="erf", layer_norm_epsilon=1e-5)),
    ("clip_quickgelu", dict(pre_norm=True, patch_bias=False, gelu="quick",
                            layer_norm_epsilon=1e-5)),
    ("dinov2", dict(layer_scale=True, embed_prefix=True, num_register_tokens=0)),
    ("dinov2_reg", dict(layer_scale=True, embed_prefix=False, num_register_tokens=4)),
    ("siglip", dict(classifier="map", class_token=False, gelu="erf")),
    ("siglip_gelu_tanh", dict(classifier="map", gelu="tanh")),
    ("avg_fc_norm", dict(classifier="gap", class_token=True, fc_norm=True)),
    ("avg_class_token", dict(classifier="gap", class_token=True, fc_norm=False)),
])
def test_architecture_options_read_from_the_file_and_config(case, options):
    from keras_vit.checkpoint_architecture import timm_architecture
    args = timm_architecture(_path(case), num_heads=2, config=CONFIGS[case])
    defaults = dict(num_register_tokens=0, embed_prefix=True, layer_scale=False,
                    pre_norm=False, patch_bias=True, fc_norm=False,
                    class_token=args["classifier"] in ("token", "distilled"))
    assert {key: args.get(key, defaults.get(key)) for key in options} == options


@pytest.mark.parametrize("case", ["avg_class_token", "avg_fc_norm"])
def test_average_pooling_with_a_class_token_is_not_class_token_pooling(case):
    # The file alone has a class token: pooling it (what main did for avg_class_token,
    # silently) gives other outputs than timm's average pooling.
    assert _rel_err(_load(case)(IMAGES), case) < TOLERANCE
    wrong = _load(case, classifier="token")
    assert _rel_err(wrong(IMAGES), case) > 100 * TOLERANCE


@pytest.mark.parametrize("case", ["clip", "siglip"])
def test_tower_without_config_is_refused_saying_what_to_pass(case):
    with pytest.raises(keras_vit.CheckpointError, match="pass config=.*or gelu= and "
                                                        "layer_norm_epsilon="):
        keras_vit.from_timm(_path(case), num_heads=2)


def test_tower_without_config_loads_with_the_numerics_passed():
    model = keras_vit.from_timm(_path("clip_quickgelu"), num_heads=2, gelu="quick",
                                layer_norm_epsilon=1e-5)
    assert _rel_err(model(IMAGES), "clip_quickgelu") < TOLERANCE


@pytest.mark.parametrize("case, wrong", [("clip_quickgelu", dict(gelu="erf")),
                                         ("siglip_gelu_tanh", dict(gelu="erf"))])
def test_tolerance_sees_the_numerics_the_config_gives(case, wrong):
    assert _rel_err(_load(case, **wrong)(IMAGES), case) > 2 * TOLERANCE


def test_openai_clip_under_the_gelu_name_computes_quickgelu_from_its_notes():
    # timm publishes OpenAI's weights once, as vit_base_patch16_clip_224.openai, noting
    # "natively QuickGELU": the hub config's architecture name alone would say GELU.
    config = {"architecture": "vit_base_patch16_clip_224", "num_classes": 5,
              "global_pool": "token", "pretrained_cfg": {"notes": [
                  "natively QuickGELU, use quickgelu model variant for original results"]}}
    model = keras_vit.from_timm(_path("clip_quickgelu"), config=config, num_heads=2)
    assert model.get_layer("encoderblock_0").gelu == "quick"
    assert _rel_err(model(IMAGES), "clip_quickgelu") < TOLERANCE


def test_clip_towers_compute_with_timms_layer_norm_epsilon():
    # (The fixture's O(1) variances hide an epsilon of 1e-5 vs 1e-6: checked in the layers.)
    model = _load("clip")
    epsilons = {model.get_layer(name).epsilon for name in ("pre_norm", "encoder_norm")}
    epsilons.add(model.get_layer("encoderblock_0").layer_norm_epsilon)
    assert epsilons == {1e-5}


def test_distilled_model_averages_its_two_heads():
    model = _load("deit_distilled")
    heads = keras.Model(model.input, [model.get_layer("head").output,
                                      model.get_layer("head_dist").output])
    head, head_dist = (np.asarray(x) for x in heads(IMAGES))
    assert np.abs(head - head_dist).max() > 1e-2  # two different heads ...
    np.testing.assert_allclose(model(IMAGES), (head + head_dist) / 2, rtol=1e-6, atol=1e-6)


def test_headless_distilled_model_returns_the_mean_of_its_two_tokens():
    features = _load("deit_distilled", include_top=False)
    assert features.output_shape == (None, 16)
    assert "head_dist" not in {layer.name for layer in features.layers}


@pytest.mark.parametrize("case", ["deit_distilled", "dinov2_reg", "siglip", "clip",
                                  "avg_fc_norm"])
def test_family_model_reloads_from_a_keras_file(case, tmp_path):
    model = _load(case)
    path = str(tmp_path / f"{case}.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded(IMAGES), model(IMAGES), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["dinov2_reg", "deit3", "clip"])
def test_inference_model_folds_layer_scale_and_prenorm_models(case):
    model = _load(case)
    folded = keras_vit.inference_model(model)
    assert not any(w.path.endswith(("ls1_gamma", "ls2_gamma")) for w in folded.weights)
    np.testing.assert_allclose(folded(IMAGES), model(IMAGES), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", ["dinov2_reg", "deit_distilled"])
def test_other_resolution_at_run_time_and_rebuilt(case):
    model = _load(case)
    big = np.concatenate([IMAGES, IMAGES[:, :16]], axis=1)  # 48 x 32
    rebuilt = keras_vit.model_at_resolution(model, (48, 32))
    np.testing.assert_allclose(rebuilt(big), model(big), rtol=1e-5, atol=1e-5)


def test_distilled_model_gets_two_new_heads_and_skips_decay_on_its_tokens():
    model = keras_vit.with_new_head(_load("deit_distilled"), 3)
    assert model(IMAGES).shape == (2, 3)
    assert not np.any(model(IMAGES))  # both heads zero-initialised
    names = {v.name for v in keras_vit.no_weight_decay_variables(_load("dinov2_reg"))}
    assert {"cls", "registers", "pos_embedding", "ls1_gamma"} <= names


def test_attention_maps_cover_the_prefix_tokens():
    model = _load("dinov2_reg")  # class token + 4 registers + 4 x 4 patches
    attentions = attention_weights(model, IMAGES)
    assert [a.shape for a in attentions] == [(2, 2, 21, 21)] * 2
    assert attention_rollout(attentions).shape == (2, 21, 21)


def test_models_of_before_keep_their_layer_configs():
    # The family's options appear in a layer's config only when used: the configs (and so
    # the .keras files) of the plain ViT stay what they were.
    model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=16, mlp_size=32,
                          num_heads=2, num_layers=1, num_classes=3)
    configs = {layer.name: layer.get_config() for layer in model.layers}
    assert set(configs["posembed_input"]) >= {"grid_size", "num_prefix_tokens"}
    for name, key in (("posembed_input", "embed_prefix"), ("embedding", "use_bias"),
                      ("encoderblock_0", "layer_scale"), ("pool", "num_prefix_tokens")):
        assert key not in configs[name], name


def test_distilled_classifier_needs_a_class_token():
    with pytest.raises(ValueError, match="needs the class token"):
        keras_vit.ViT(image_size=32, patch_size=8, hidden_size=16, mlp_size=32, num_heads=2,
                      num_layers=1, classifier="distilled", class_token=False)


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_family_member_loads_by_name_from_a_hub_directory(case, tmp_path):
    """from_preset on a timm hub directory (config.json + model.safetensors) passes the
    config to from_timm: pooling, GELU variant and epsilons as the family member needs."""
    import shutil

    directory = tmp_path / case
    directory.mkdir()
    shutil.copy(_path(case), directory / "model.safetensors")
    config = dict(CONFIGS[case], model_args={"num_heads": 2},
                  pretrained_cfg={"mean": [0.5] * 3, "std": [0.5] * 3,
                                  "input_size": [3, 32, 32], "interpolation": "bicubic"})
    (directory / "config.json").write_text(json.dumps(config))
    assert _rel_err(keras_vit.from_preset(str(directory))(IMAGES), case) < TOLERANCE
