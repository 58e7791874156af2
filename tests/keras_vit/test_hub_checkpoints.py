"""timm and transformers checkpoints (.safetensors): logits equal to what their own library
computes (fixtures written by benchmarks/make_hub_fixtures.py with torch, timm and
transformers; no torch needed here), and the loader's guarantees."""
import json
import logging
import os
import shutil

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import keras_vit
from keras_vit.weights import load_weights
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "hub")
REFERENCE = np.load(os.path.join(FIXTURES, "reference.npz"))
IMAGES = REFERENCE["images"].astype("float32")
# The fixtures' architecture (make_hub_fixtures.py): 32x32 images, width 32, 2 heads, 2 blocks.
TINY_HUB = dict(image_size=32, hidden_size=32, mlp_size=64, num_heads=2, num_layers=2,
                num_classes=5)
CASES = {
    "timm_vit_token": dict(patch_size=8, weights="timm_vit_token.safetensors"),
    "timm_vit_avg": dict(patch_size=8, classifier="gap", weights="timm_vit_avg.safetensors"),
    "timm_hybrid": dict(patch_size=1, resnet_stages=(1,), weights="timm_hybrid.safetensors"),
    "transformers_vit": dict(patch_size=8, weights="transformers_vit"),
}
# Relative error max|diff| / max|ref| against the source's float32 logits. The same models
# with tanh GELU are 1.0e-4 (token), 3.1e-4 (avg), 2.2e-4 (hybrid), 1.8e-4 (transformers)
# away (checked by test_tolerance_is_tighter_than_the_tanh_gelu_difference).
TOLERANCE = {"timm_vit_token": 1e-5, "timm_vit_avg": 1e-5, "timm_hybrid": 5e-5,
             "transformers_vit": 1e-5}


def _path(name):
    return os.path.join(FIXTURES, name)


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _model(case, **overrides):
    args = dict(TINY_HUB, **CASES[case])
    args["weights"] = _path(args["weights"])
    args.update(overrides)
    return keras_vit.ViT(**args)


@pytest.mark.parametrize("case", sorted(CASES))
def test_weights_argument_computes_the_source_logits(case):
    model = _model(case)
    assert _rel_err(model(IMAGES).numpy(), REFERENCE[case]) < TOLERANCE[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_tolerance_is_tighter_than_the_tanh_gelu_difference(case):
    # A model with the original's tanh GELU must fail the parity check above (by 2x at least).
    model = _model(case, gelu="tanh")
    assert _rel_err(model(IMAGES).numpy(), REFERENCE[case]) > 2 * TOLERANCE[case]


def test_source_numerics_are_in_the_layer_configs():
    timm = _model("timm_hybrid")
    block = timm.get_layer("encoderblock_0").get_config()
    assert (block["gelu"], block["layer_norm_epsilon"]) == ("erf", 1e-6)
    assert timm.get_layer("encoder_norm").epsilon == 1e-6
    assert timm.get_layer("gn_root").epsilon == 1e-5
    unit = timm.get_layer("block1_unit1")
    assert (unit.get_config()["group_norm_epsilon"], unit.get_config()["std_conv_epsilon"],
            unit.get_config()["std_conv_epsilon_in_sqrt"]) == (1e-5, 1e-8, True)
    # ... and the unit's sublayers use them (the fixture's unit GroupNorms see O(1)
    # variances, where 1e-5 and 1e-6 give the same logits to 1e-6: checked here instead).
    for name in ("gn1", "gn2", "gn3", "gn_proj"):
        assert getattr(unit, name).epsilon == 1e-5, name
    for name in ("conv1", "conv2", "conv3", "conv_proj"):
        assert (getattr(unit, name).epsilon, getattr(unit, name).epsilon_in_sqrt) == (
            1e-8, True), name
    stem = timm.get_layer("conv_root").get_config()
    assert (stem["epsilon"], stem["epsilon_in_sqrt"]) == (1e-8, True)
    hf = _model("transformers_vit")
    assert hf.get_layer("encoderblock_1").get_config()["layer_norm_epsilon"] == 1e-12
    assert hf.get_layer("encoder_norm").epsilon == 1e-12
    original = keras_vit.ViT(image_size=32, patch_size=1, hidden_size=32, mlp_size=64,
                             num_heads=2, num_layers=1, resnet_stages=(1,))
    assert original.get_layer("encoderblock_0").get_config()["gelu"] == "tanh"
    assert original.get_layer("gn_root").epsilon == 1e-6
    assert original.get_layer("conv_root").get_config()["epsilon_in_sqrt"] is False


@pytest.mark.parametrize("case,option,wrong", [
    ("transformers_vit", "layer_norm_epsilon", 1e-6),   # the original's instead of 1e-12
    ("timm_hybrid", "group_norm_epsilon", 1e-6),        # the original's instead of 1e-5
    ("timm_hybrid", "std_conv_epsilon_in_sqrt", False),  # (w - m) / (std + 1e-8)
])
def test_each_source_epsilon_matters_on_the_fixtures(case, option, wrong):
    # The fixtures are built so that each epsilon is visible (see make_hub_fixtures.py):
    # with the wrong one the parity check fails.
    model = _model(case, **{option: wrong})
    assert _rel_err(model(IMAGES).numpy(), REFERENCE[case]) > 10 * TOLERANCE[case]


def test_from_transformers_builds_the_config_and_labels():
    model = keras_vit.from_transformers(_path("transformers_vit"))
    assert model.class_names == ["cat", "dog", "fish", "bird", "frog"]
    assert model.output_shape == (None, 5)
    assert keras_vit.model_image_size(model) == (32, 32)
    block = model.get_layer("encoderblock_0")
    assert (block.num_heads, block.mlp_size, block.gelu, block.layer_norm_epsilon) == (
        2, 64, "erf", 1e-12)
    assert len([layer for layer in model.layers
                if isinstance(layer, keras_vit.layers.TransformerBlock)]) == 2
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["transformers_vit"]) < 1e-5


@pytest.mark.parametrize("case", ["timm_vit_token", "timm_vit_avg", "timm_hybrid"])
def test_from_timm_reads_the_architecture_from_the_shapes(case):
    model = keras_vit.from_timm(_path(CASES[case]["weights"]), num_heads=2)
    pooling = model.get_layer("pool").classifier
    assert pooling == ("gap" if case == "timm_vit_avg" else "token")
    assert _rel_err(model(IMAGES).numpy(), REFERENCE[case]) < TOLERANCE[case]


def test_from_timm_needs_the_head_count_for_an_unknown_width():
    with pytest.raises(keras_vit.CheckpointError, match="pass num_heads"):
        keras_vit.from_timm(_path("timm_vit_token.safetensors"))


def test_keras_round_trip_keeps_the_source_numerics(tmp_path):
    for case in ("transformers_vit", "timm_hybrid"):
        model = _model(case)
        path = str(tmp_path / f"{case}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert loaded.get_layer("encoderblock_0").gelu == "erf"
        assert loaded.get_layer("encoder_norm").epsilon == model.get_layer("encoder_norm").epsilon
        assert _rel_err(loaded(IMAGES).numpy(), REFERENCE[case]) < TOLERANCE[case]


@pytest.mark.parametrize("case", ["transformers_vit", "timm_hybrid"])
def test_inference_copy_keeps_the_source_numerics(case):
    # keras_vit.inference_model is what the frozen serving export is made from (it folds the
    # LayerNorms into the projections): it must keep erf GELU and the epsilons.
    copy = keras_vit.inference_model(_model(case))
    assert _rel_err(copy(IMAGES).numpy(), REFERENCE[case]) < TOLERANCE[case]


@pytest.mark.parametrize("case", ["timm_vit_token", "transformers_vit"])
def test_include_top_false_ignores_the_head(case, caplog):
    full = _model(case)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        headless = _model(case, include_top=False)
    assert "has no head" in caplog.text
    pooled = keras.Model(full.input, full.get_layer("pool").output)(IMAGES).numpy()
    np.testing.assert_allclose(headless(IMAGES).numpy(), pooled, rtol=0, atol=1e-6)


def test_position_embeddings_are_resized_for_another_image_size(caplog):
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        at_48 = _model("timm_vit_token", image_size=48)
    assert "pos_embed grid (4, 4) -> (6, 6)" in caplog.text
    # The original semantics: as the 32 model resized to 48 (aligned-corners bilinear).
    resized = keras_vit.model_at_resolution(_model("timm_vit_token"), 48)
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype("float32")
    np.testing.assert_allclose(at_48(x).numpy(), resized(x).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["model.bin", "vit.pth", "weights.pt"])
def test_pickled_torch_files_are_refused_naming_safetensors(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04not read")
    with pytest.raises(keras_vit.CheckpointError) as info:
        _model("timm_vit_token", weights=str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and ".safetensors" in message


def test_transformers_directory_with_only_a_pickle_is_refused(tmp_path):
    directory = tmp_path / "vit"
    directory.mkdir()
    shutil.copy(_path("transformers_vit/config.json"), directory)
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04not read")
    with pytest.raises(keras_vit.CheckpointError, match=r"pytorch_model.bin: pickled .*"
                                                        r"model.safetensors"):
        _model("transformers_vit", weights=str(directory))


def _timm_tensors():
    return load_file(_path("timm_vit_token.safetensors"))


def test_mismatch_lists_every_offending_key_and_changes_nothing(tmp_path):
    tensors = _timm_tensors()
    del tensors["blocks.1.norm2.weight"]
    tensors["blocks.0.mlp.fc1.bias"] = np.zeros(65, np.float32)
    tensors["fc_norm.weight"] = np.ones(32, np.float32)
    path = str(tmp_path / "bad.safetensors")
    save_file(tensors, path)
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8))
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(keras_vit.CheckpointMismatchError) as info:
        keras_vit.load_timm(model, path)
    message = str(info.value)
    assert f"timm checkpoint {path}" in message and "3 problem(s)" in message
    assert "missing key 'blocks.1.norm2.weight'" in message
    assert "blocks.0.mlp.fc1.bias: expected shape (64,), found (65,)" in message
    assert "unexpected key 'fc_norm.weight'" in message and "build with fc_norm=True" in message
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_transformers_mismatch_names_its_keys(tmp_path):
    directory = tmp_path / "vit"
    shutil.copytree(_path("transformers_vit"), directory)
    with pytest.raises(keras_vit.CheckpointMismatchError,
                       match=r"vit.encoder.layer.0.attention.attention.query.weight: expected "
                             r"shape \(48, 48\), found \(32, 32\)"):
        keras_vit.ViT(**dict(TINY_HUB, patch_size=8, hidden_size=48), weights=str(directory))


def test_non_finite_values_are_refused_and_nothing_changes(tmp_path):
    tensors = _timm_tensors()
    tensors["blocks.0.attn.qkv.weight"][0, 0] = np.nan
    path = str(tmp_path / "nan.safetensors")
    save_file(tensors, path)
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8))
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(keras_vit.CheckpointError, match="NaN.*'blocks.0.attn.qkv.weight'"):
        keras_vit.load_timm(model, path)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("content", [b"", b"not safetensors at all", "truncated"])
def test_corrupt_safetensors_give_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    if content == "truncated":
        data = open(_path("timm_vit_token.safetensors"), "rb").read()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(keras_vit.CheckpointError, match=f"{path} is not a readable "
                                                        r"\.safetensors file"):
        _model("timm_vit_token", weights=str(path))


def test_transformers_file_given_as_timm_file_says_to_pass_the_directory():
    with pytest.raises(keras_vit.CheckpointError, match="pass its model directory"):
        _model("transformers_vit", weights=_path("transformers_vit/model.safetensors"))


def test_directory_that_is_not_a_vit_is_refused(tmp_path):
    directory = tmp_path / "bert"
    shutil.copytree(_path("transformers_vit"), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
    with pytest.raises(keras_vit.CheckpointError, match="model_type 'bert' is not a "
                                                        "transformers ViT"):
        keras_vit.from_transformers(str(directory))


def test_another_class_count_gets_a_zero_head(caplog):
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8, num_classes=3), gelu="erf")
    model.get_layer("head").kernel.assign(np.ones((32, 3), np.float32))  # not zero before
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        report = keras_vit.load_timm(model, _path("timm_vit_token.safetensors"))
    assert report["reinitialized"] == ["head.weight", "head.bias"]
    assert "does not fit 3 classes" in caplog.text
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model(IMAGES).numpy(), 0.0)
    full = _model("timm_vit_token")
    features = keras.Model(model.input, model.get_layer("pool").output)(IMAGES).numpy()
    pooled = keras.Model(full.input, full.get_layer("pool").output)(IMAGES).numpy()
    np.testing.assert_allclose(features, pooled, rtol=0, atol=1e-6)


def test_loading_into_a_model_with_other_numerics_is_logged(caplog):
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8))  # the original's tanh GELU
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        keras_vit.load_timm(model, _path("timm_vit_token.safetensors"))
    assert "timm computes with gelu='erf'" in caplog.text
    assert "this model has gelu='tanh'" in caplog.text


def test_transformers_vit_model_without_classifier_gives_a_headless_model(tmp_path):
    # A bare ViTModel: keys without the "vit." prefix and no classifier.
    directory = tmp_path / "vit_model"
    directory.mkdir()
    shutil.copy(_path("transformers_vit/config.json"), directory)
    tensors = load_file(_path("transformers_vit/model.safetensors"))
    save_file({k[len("vit."):]: v for k, v in tensors.items() if k.startswith("vit.")},
              str(directory / "model.safetensors"))
    headless = keras_vit.from_transformers(str(directory))
    assert headless.class_names == [] and headless.output_shape == (None, 32)
    full = _model("transformers_vit")
    pooled = keras.Model(full.input, full.get_layer("pool").output)(IMAGES).numpy()
    np.testing.assert_allclose(headless(IMAGES).numpy(), pooled, rtol=0, atol=1e-6)


def test_bfloat16_tensors_are_refused_naming_the_key(tmp_path):
    # safetensors' numpy API cannot write bfloat16: write the format by hand (8-byte header
    # length, JSON header, data).
    header = json.dumps({"cls_token": {"dtype": "BF16", "shape": [1, 1, 2],
                                       "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    with pytest.raises(keras_vit.CheckpointError, match="'cls_token' is BF16, which numpy "
                                                        "cannot hold"):
        _model("timm_vit_token", weights=str(path))


# ---- Review of the hub loaders (issue 15c). ----

def _save_timm(tmp_path, tensors, name="ckpt.safetensors"):
    path = str(tmp_path / name)
    save_file(tensors, path)
    return path


def _weights(model):
    return [v.numpy().copy() for v in model.weights]


def _unchanged(before, model):
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


def _no_build(monkeypatch):
    """keras_vit.ViT raises if called: a check must refuse the file before any model."""
    def build(**kwargs):
        raise AssertionError(f"keras_vit.ViT called before the checks ({kwargs})")
    monkeypatch.setattr(keras_vit.models, "ViT", build)


def test_timm_pre_logits_load_into_a_model_with_representation_size(tmp_path):
    # Old timm: pre_logits = nn.Sequential(OrderedDict([('fc', nn.Linear(D, R)), ('act', Tanh)])).
    tensors = _timm_tensors()
    rng = np.random.default_rng(0)
    tensors["pre_logits.fc.weight"] = rng.normal(size=(24, 32)).astype(np.float32)
    tensors["pre_logits.fc.bias"] = rng.normal(size=(24,)).astype(np.float32)
    tensors["head.weight"] = rng.normal(size=(5, 24)).astype(np.float32)
    path = _save_timm(tmp_path, tensors)
    model = _model("timm_vit_token", weights=path, representation_size=24)
    np.testing.assert_array_equal(model.get_layer("pre_logits").kernel.numpy(),
                                  tensors["pre_logits.fc.weight"].T)
    built = keras_vit.from_timm(path, num_heads=2)
    assert built.get_layer("pre_logits").units == 24
    np.testing.assert_allclose(built(IMAGES).numpy(), model(IMAGES).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("case,key", [("timm_vit_token", "pre_logits.fc.weight"),
                                      ("transformers_vit", "pooler.dense.weight")])
def test_checkpoint_without_pre_logits_into_a_model_with_them_is_refused(case, key):
    # As for .npz: the model's pre-logits would stay random under a loaded head.
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8, representation_size=32))
    before = _weights(model)
    weights = _path(CASES[case]["weights"])
    with pytest.raises(keras_vit.CheckpointMismatchError, match=f"missing key '{key}'"):
        load_weights(model, weights)
    _unchanged(before, model)


def test_values_overflowing_float32_are_refused_and_nothing_changes(tmp_path):
    tensors = _timm_tensors()
    tensors["norm.weight"] = np.full(32, 1e300)  # float64, finite, inf as float32
    path = _save_timm(tmp_path, tensors)
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8))
    before = _weights(model)
    with pytest.raises(keras_vit.CheckpointError, match="infinite.*'norm.weight'") as info:
        keras_vit.load_timm(model, path)
    assert "\n" not in str(info.value) and path in str(info.value)
    _unchanged(before, model)


def test_integer_tensors_are_refused_naming_the_key(tmp_path):
    tensors = _timm_tensors()
    tensors["blocks.0.norm1.weight"] = np.arange(32, dtype=np.int32)
    path = _save_timm(tmp_path, tensors)
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8))
    before = _weights(model)
    with pytest.raises(keras_vit.CheckpointError,
                       match=r"not floating-point.*'blocks.0.norm1.weight' \(int32\)"):
        keras_vit.load_timm(model, path)
    _unchanged(before, model)


def _vit_model_directory(tmp_path, pooler=True, **config_update):
    """A bare transformers ViTModel (google/vit-base-patch16-224-in21k's layout)."""
    directory = tmp_path / "vit_model"
    directory.mkdir()
    config = json.loads(open(_path("transformers_vit/config.json")).read())
    config.update(architectures=["ViTModel"], **config_update)
    (directory / "config.json").write_text(json.dumps(config))
    tensors = load_file(_path("transformers_vit/model.safetensors"))
    tensors = {k[len("vit."):]: v for k, v in tensors.items() if k.startswith("vit.")}
    if pooler:
        rng = np.random.default_rng(1)
        tensors["pooler.dense.weight"] = rng.normal(size=(32, 32)).astype(np.float32)
        tensors["pooler.dense.bias"] = rng.normal(size=(32,)).astype(np.float32)
    save_file(tensors, str(directory / "model.safetensors"))
    return str(directory)


@pytest.mark.parametrize("source", ["timm", "transformers"])
def test_headless_checkpoint_loads_with_a_zero_head_for_fine_tuning(tmp_path, caplog, source):
    # timm *.orig_in21k (num_classes=0: no head.*), transformers ViTModel (no classifier.*).
    if source == "timm":
        tensors = _timm_tensors()
        del tensors["head.weight"], tensors["head.bias"]
        weights = _save_timm(tmp_path, tensors)
        full = _model("timm_vit_token")
    else:
        weights = _vit_model_directory(tmp_path, pooler=False)
        full = _model("transformers_vit")
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.ViT(weights=weights, **dict(TINY_HUB, patch_size=8, num_classes=10))
    assert "the checkpoint has no head" in caplog.text and "zero-initialised" in caplog.text
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), 0.0)
    features = keras.Model(model.input, model.get_layer("pool").output)(IMAGES).numpy()
    pooled = keras.Model(full.input, full.get_layer("pool").output)(IMAGES).numpy()
    np.testing.assert_allclose(features, pooled, rtol=0, atol=1e-6)
    load_weights(model, weights)  # and again into a built model


def test_transformers_pooler_act_other_than_tanh_is_refused(tmp_path):
    directory = _vit_model_directory(tmp_path, pooler_act="relu")
    with pytest.raises(keras_vit.CheckpointError, match="config.json: pooler_act 'relu'") as info:
        keras_vit.from_transformers(directory)
    assert "\n" not in str(info.value)
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=8, representation_size=32,
                                 include_top=False))
    with pytest.raises(keras_vit.CheckpointError, match="pooler_act 'relu'"):
        keras_vit.load_transformers(model, directory)


def test_hybrid_loaded_into_a_model_with_original_numerics_warns_about_each(caplog):
    model = keras_vit.ViT(**dict(TINY_HUB, patch_size=1, resnet_stages=(1,)), gelu="erf")
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        keras_vit.load_timm(model, _path("timm_hybrid.safetensors"))
    assert "gelu=" not in caplog.text  # erf, as timm
    assert "timm computes with group_norm_epsilon=1e-05" in caplog.text
    assert "timm computes with std_conv_epsilon=1e-08" in caplog.text
    assert "timm computes with std_conv_epsilon_in_sqrt=True" in caplog.text


def _transformers_directory(tmp_path, **config_update):
    directory = tmp_path / "vit"
    shutil.copytree(_path("transformers_vit"), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(dict(config, **config_update)))
    return str(directory)


@pytest.mark.parametrize("field,value", [
    ("hidden_size", 10**9), ("hidden_size", 2048), ("intermediate_size", 8192),
    ("num_hidden_layers", 10**6), ("num_hidden_layers", 1), ("num_channels", 4),
    ("patch_size", 4), ("image_size", 64)])
def test_from_transformers_checks_the_config_against_the_tensor_shapes_first(
        tmp_path, monkeypatch, field, value):
    # A 100 KB file with a config saying hidden_size=2048 reached 1 GB before the error.
    directory = _transformers_directory(tmp_path, **{field: value})
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=f"config.json: {field} {value} ") as info:
        keras_vit.from_transformers(directory)
    assert "\n" not in str(info.value) and "model.safetensors" in str(info.value)


@pytest.mark.parametrize("field,value", [
    ("hidden_size", "abc"), ("hidden_size", None), ("hidden_size", 32.7), ("hidden_size", True),
    ("num_attention_heads", 0), ("intermediate_size", -64), ("num_channels", "three"),
    ("num_hidden_layers", [2]), ("layer_norm_eps", -1.0), ("layer_norm_eps", "x"),
    ("layer_norm_eps", float("inf")), ("layer_norm_eps", True), ("hidden_act", ["gelu"]),
    ("hidden_act", "relu"), ("image_size", 0), ("patch_size", True), ("patch_size", [8, "8"]),
    ("pooler_act", 3)])
def test_config_fields_of_the_wrong_type_are_refused_naming_the_file(
        tmp_path, monkeypatch, field, value):
    directory = _transformers_directory(tmp_path, **{field: value})
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError) as info:
        keras_vit.from_transformers(directory)
    message = str(info.value)
    assert message.startswith(os.path.join(directory, "config.json") + f": {field} ")
    assert "\n" not in message


def _deep(tensors):
    tensors["blocks.40.junk"] = np.zeros(1, np.float32)


def _gap(tensors):
    for key in [k for k in tensors if k.startswith("blocks.1.")]:
        tensors[key.replace("blocks.1.", "blocks.2.")] = tensors.pop(key)


def _hollow(tensors):
    tensors["blocks.2.attn.qkv.weight"] = np.zeros((96, 32), np.float32)


def _stage(tensors):
    tensors["patch_embed.backbone.stages.6.blocks.0.x"] = np.zeros(1, np.float16)


@pytest.mark.parametrize("fixture,edit,error", [
    ("timm_vit_token", _deep, r"'blocks.40.junk' .*2 blocks"),
    ("timm_vit_token", _gap, r"blocks 0, 2 .*not 0\.\.1"),
    ("timm_vit_token", _hollow, r"blocks declare 20,160 values, but 3 blocks .* 24,576"),
    ("timm_hybrid", _stage, r"'patch_embed.backbone.stages.6.blocks.0.x' .*1 stage"),
])
def test_from_timm_counts_only_complete_blocks_and_refuses_stray_indices(
        tmp_path, monkeypatch, fixture, edit, error):
    tensors = load_file(_path(f"{fixture}.safetensors"))
    edit(tensors)
    path = _save_timm(tmp_path, tensors)
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=error) as info:
        keras_vit.from_timm(path, num_heads=2)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("key,shape,error", [
    ("patch_embed.proj.weight", (32, 192), r"'patch_embed.proj.weight' has shape \(32, 192\)"),
    ("pos_embed", (17,), r"'pos_embed' has shape \(17,\)"),
    ("patch_embed.proj.weight", (32, 3, 0, 0), r"patch size \(0, 0\)"),
    ("patch_embed.proj.weight", (32, 3, 8, 4), r"patch size \(8, 4\)"),
    ("blocks.0.mlp.fc1.weight", (64,), r"'blocks.0.mlp.fc1.weight' has shape \(64,\)"),
    ("head.weight", (5, 32, 1), r"'head.weight' has shape \(5, 32, 1\)"),
])
def test_from_timm_refuses_tensors_of_the_wrong_rank(tmp_path, monkeypatch, key, shape, error):
    tensors = _timm_tensors()
    tensors[key] = np.zeros(shape, np.float32)
    path = _save_timm(tmp_path, tensors)
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=error) as info:
        keras_vit.from_timm(path, num_heads=2)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


# ---- Hostile hub files (issue 20): dtype and width before the grid builds anything. ----

@pytest.mark.parametrize("dtype,shape,error", [
    # A 2.3 MB file with a (1, 1 + 1500**2, 1) bool pos_embed built a 12,000 px model (5.9 GB).
    (np.bool_, (1, 1 + 300**2, 1), r"not floating-point.*'pos_embed' \(bool\)"),
    (np.float16, (1, 1 + 300**2, 1), r"'pos_embed' has shape \(1, 90001, 1\), expected "
                                     r"\(1, tokens, 32\)"),
])
def test_from_timm_checks_position_embedding_dtype_and_width_first(
        tmp_path, monkeypatch, dtype, shape, error):
    tensors = _timm_tensors()
    tensors["pos_embed"] = np.zeros(shape, dtype)
    path = _save_timm(tmp_path, tensors)
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=error) as info:
        keras_vit.from_timm(path, num_heads=2)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("source", ["timm", "transformers"])
def test_position_grid_past_the_bound_is_refused_before_building(tmp_path, monkeypatch, source):
    from keras_vit import checkpoints
    monkeypatch.setitem(checkpoints.ARCHITECTURE_BOUNDS, "position grid side", 4)
    tensors = _timm_tensors() if source == "timm" else load_file(
        _path("transformers_vit/model.safetensors"))
    key = "pos_embed" if source == "timm" else "vit.embeddings.position_embeddings"
    tensors[key] = np.zeros((1, 1 + 5 * 5, 32), np.float32)
    if source == "timm":
        path = _save_timm(tmp_path, tensors)
        build = lambda: keras_vit.from_timm(path, num_heads=2)  # noqa: E731
    else:
        path = _transformers_directory(tmp_path, image_size=40)
        save_file(tensors, os.path.join(path, "model.safetensors"))
        build = lambda: keras_vit.from_transformers(path)  # noqa: E731
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=rf"'{key}' declares 25 grid tokens, "
                                                        r"more .* at most 4 x 4") as info:
        build()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dtype,shape,error", [
    (np.bool_, (1, 1 + 300**2, 1), r"not floating-point.*position_embeddings' \(bool\)"),
    (np.float16, (1, 1 + 300**2, 1), r"position_embeddings' has shape \(1, 90001, 1\), "
                                     r"expected \(1, tokens, 32\)"),
])
def test_from_transformers_checks_position_embedding_dtype_and_width_first(
        tmp_path, monkeypatch, dtype, shape, error):
    directory = _transformers_directory(tmp_path, image_size=300 * 8)
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    tensors["vit.embeddings.position_embeddings"] = np.zeros(shape, dtype)
    save_file(tensors, os.path.join(directory, "model.safetensors"))
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match=error) as info:
        keras_vit.from_transformers(directory)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_config_json_nested_too_deeply_is_a_one_line_error(tmp_path, monkeypatch):
    # 200,000 nested "[" were a RecursionError traceback.
    directory = _transformers_directory(tmp_path)
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write("[" * 200_000)
    _no_build(monkeypatch)
    with pytest.raises(keras_vit.CheckpointError, match="nested too deeply") as info:
        keras_vit.from_transformers(directory)
    message = str(info.value)
    assert message.startswith(os.path.join(directory, "config.json")) and "\n" not in message
