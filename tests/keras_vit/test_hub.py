"""Weights by name (keras_vit.from_preset): hub-layout directories of timm and transformers,
``hf://`` handles through huggingface_hub's offline cache, the checkpoint's own preprocessing
(mean / std, interpolation) and label names carried into ``.keras`` files, ``keras-vit
predict`` and the serving export; and the one path-kind detector (keras_vit.weights_kind).

The weights are the tiny fixtures of tests/fixtures/hub (checked against timm's and
transformers' own logits in test_hub_checkpoints.py); no network."""
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vit
from keras_vit import weights_kind as kinds
from keras_vit.errors import CheckpointError
from keras_vit.preprocessing import PixelNormalization, model_preprocessing
from tests.conftest import REPO

FIXTURES = os.path.join(REPO, "tests", "fixtures", "hub")
REFERENCE = np.load(os.path.join(FIXTURES, "reference.npz"))
IMAGES = REFERENCE["images"].astype("float32")  # pixels the references saw as x / 127.5 - 1
LABELS = ["cat", "dog", "fish", "bird", "frog"]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _pixels(mean, std):
    """[0, 255] pixels that a model normalising with ``mean`` / ``std`` feeds to its first
    block exactly as the references' inputs (x / 127.5 - 1)."""
    return (255.0 * (np.asarray(std) * (IMAGES / 127.5 - 1.0) + np.asarray(mean))).astype(
        "float32")


def _rel_err(a, b):
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def _timm_dir(tmp_path, name="timm", **pretrained):
    """What timm's save_for_hf writes for the fixture's token-pooled ViT: config.json
    (architecture, num_classes, label_names, pretrained_cfg) and model.safetensors."""
    path = tmp_path / name
    path.mkdir()
    shutil.copy(os.path.join(FIXTURES, "timm_vit_token.safetensors"), path / "model.safetensors")
    cfg = dict(input_size=[3, 32, 32], interpolation="bicubic", mean=IMAGENET_MEAN,
               std=IMAGENET_STD, num_classes=5, crop_pct=1.0)
    cfg.update(pretrained)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    config = dict(architecture="vit_tiny_patch8_32", num_classes=cfg.get("num_classes", 5),
                  num_features=32, global_pool="token", model_args=dict(num_heads=2),
                  label_names=LABELS, pretrained_cfg=cfg)
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


def _transformers_dir(tmp_path, name="transformers", **processor):
    """What transformers' save_pretrained writes for the fixture: config.json,
    model.safetensors and (processor not None) preprocessor_config.json."""
    path = tmp_path / name
    shutil.copytree(os.path.join(FIXTURES, "transformers_vit"), path)
    if processor.get("image_mean", True) is not None:
        config = dict(image_processor_type="ViTImageProcessor", do_resize=True,
                      size=dict(height=32, width=32), resample=3, do_rescale=True,
                      rescale_factor=1 / 255, do_normalize=True, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD)
        config.update(processor)
        (path / "preprocessor_config.json").write_text(json.dumps(config))
    return str(path)


# ---- the path-kind detector ----

def test_weights_kind_names_every_kind_of_path(tmp_path):
    for name in ("a.npz", "b.safetensors", "c.bin", "d.keras", "e.weights.h5", "f.txt"):
        (tmp_path / name).write_bytes(b"x")
    found = {name: kinds.weights_kind(str(tmp_path / name))
             for name in ("a.npz", "b.safetensors", "c.bin", "d.keras", "e.weights.h5", "f.txt")}
    assert found == {"a.npz": kinds.NPZ, "b.safetensors": kinds.TIMM_FILE, "c.bin": kinds.PICKLE,
                     "d.keras": kinds.KERAS, "e.weights.h5": kinds.KERAS_WEIGHTS,
                     "f.txt": kinds.UNKNOWN}
    assert kinds.weights_kind(_timm_dir(tmp_path)) == kinds.TIMM_DIR
    assert kinds.weights_kind(_transformers_dir(tmp_path)) == kinds.TRANSFORMERS
    assert kinds.weights_kind("hf://google/vit-base-patch16-224@main") == kinds.HUB
    assert kinds.weights_kind("imagenet21k") == kinds.PUBLISHED
    assert kinds.weights_kind(str(tmp_path / "missing.npz")) == kinds.NPZ
    assert kinds.weights_kind(None) is None


def test_the_old_deciders_agree_with_the_detector(tmp_path):
    from export.model_sources import model_kind
    from keras_vit.pretrained import is_published_name
    from keras_vit.sources import weights_source
    timm = _timm_dir(tmp_path)
    assert weights_source(timm) == "timm"  # a directory was always "transformers" before
    assert weights_source(_transformers_dir(tmp_path)) == "transformers"
    assert model_kind(timm) == "hub" and model_kind("hf://org/name") == "hub"
    assert not is_published_name("hf://org/name") and is_published_name("imagenet21k")
    with pytest.raises(ValueError, match="not a hub handle"):
        model_kind("hf://just-a-name")


# ---- timm directories ----

def test_timm_directory_gets_its_mean_std_interpolation_and_labels(tmp_path):
    model = keras_vit.from_preset(_timm_dir(tmp_path))
    assert model_preprocessing(model) == dict(mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD),
                                              interpolation="bicubic")
    assert model.class_names == LABELS
    assert keras_vit.model_image_size(model) == (32, 32)
    logits = model(_pixels(IMAGENET_MEAN, IMAGENET_STD)).numpy()
    assert _rel_err(logits, REFERENCE["timm_vit_token"]) < 1e-5
    # from_timm with the defaults (x / 127.5 - 1) is off for these pixels: the silent error
    plain = keras_vit.from_timm(os.path.join(tmp_path, "timm", "model.safetensors"),
                                num_heads=2)
    assert _rel_err(plain(_pixels(IMAGENET_MEAN, IMAGENET_STD)).numpy(),
                    REFERENCE["timm_vit_token"]) > 0.05


def test_timm_directory_without_mean_std_says_what_to_pass(tmp_path):
    directory = _timm_dir(tmp_path, mean=None, std=None)
    with pytest.raises(CheckpointError, match=r"does not say .*mean and std; pass mean=, std=") \
            as error:
        keras_vit.from_preset(directory)
    assert "\n" not in str(error.value)
    model = keras_vit.from_preset(directory, mean=0.5, std=0.5)
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["timm_vit_token"]) < 1e-5


@pytest.mark.parametrize("change, message", [
    (dict(num_classes=1000), r"num_classes 1000 does not match the weights' head of 5 "),
    (dict(interpolation="hamming"), r"interpolation 'hamming' .*pass interpolation="),
])
def test_timm_config_that_contradicts_the_weights_is_one_line(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message) as error:
        keras_vit.from_preset(_timm_dir(tmp_path, **change))
    assert "\n" not in str(error.value)


def test_timm_label_names_that_miss_classes_are_refused(tmp_path):
    directory = _timm_dir(tmp_path)
    config = json.loads(open(os.path.join(directory, "config.json")).read())
    config["label_names"] = LABELS[:3]
    open(os.path.join(directory, "config.json"), "w").write(json.dumps(config))
    with pytest.raises(CheckpointError, match="label_names does not name the 5 classes"):
        keras_vit.from_preset(directory)


def test_a_new_head_gets_no_label_names(tmp_path):
    timm = keras_vit.from_preset(_timm_dir(tmp_path), num_classes=3)
    transformers = keras_vit.from_preset(_transformers_dir(tmp_path), num_classes=3)
    for model in (timm, transformers):
        assert model.output_shape[-1] == 3 and not getattr(model, "class_names", None)


def test_timm_directory_as_weights_loads_with_timm_numerics(tmp_path):
    model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=32, mlp_size=64, num_heads=2,
                          num_layers=2, num_classes=5, weights=_timm_dir(tmp_path))
    assert model.get_layer("encoderblock_0").get_config()["gelu"] == "erf"
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["timm_vit_token"]) < 1e-5


# ---- transformers directories ----

def test_transformers_directory_reads_its_preprocessor_config(tmp_path):
    model = keras_vit.from_preset(_transformers_dir(tmp_path))
    assert model_preprocessing(model) == dict(mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD),
                                              interpolation="bicubic")
    assert model.class_names == LABELS
    logits = model(_pixels(IMAGENET_MEAN, IMAGENET_STD)).numpy()
    assert _rel_err(logits, REFERENCE["transformers_vit"]) < 1e-5


def test_transformers_rescale_factor_and_do_normalize_are_applied(tmp_path):
    # pixels / 127.5 - 1 written transformers' way: rescale by 1/127.5, subtract 1, divide by 1
    model = keras_vit.from_preset(_transformers_dir(
        tmp_path, rescale_factor=1 / 127.5, image_mean=[1.0] * 3, image_std=[1.0] * 3))
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["transformers_vit"]) < 1e-5
    off = keras_vit.from_preset(_transformers_dir(tmp_path, "off", do_normalize=False))
    assert model_preprocessing(off)["mean"] == (0.0, 0.0, 0.0)
    assert model_preprocessing(off)["std"] == (1.0, 1.0, 1.0)


def test_transformers_directory_without_preprocessor_config_says_what_to_pass(tmp_path):
    directory = _transformers_dir(tmp_path, image_mean=None)
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json does not say .*"
                                              r"pass mean=, std="):
        keras_vit.from_preset(directory)
    model = keras_vit.from_preset(directory, mean=0.5, std=0.5)
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["transformers_vit"]) < 1e-5


def test_a_directory_that_is_no_preset_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        keras_vit.from_preset(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="not a preset: expected hf://ORG/NAME"):
        keras_vit.from_preset(os.path.join(FIXTURES, "timm_vit_token.safetensors"))


# ---- hf:// handles: huggingface_hub's offline cache ----

@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline huggingface_hub cache holding org/tiny-vit (main = COMMIT), in the layout
    the library writes (models--ORG--NAME/refs/main, snapshots/COMMIT/)."""
    from huggingface_hub import constants
    cache = tmp_path / "hub-cache"
    repo = cache / "models--org--tiny-vit"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.parent.mkdir(parents=True)
    shutil.copytree(_transformers_dir(tmp_path), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_handle_loads_from_the_offline_cache(hub_cache):
    for handle in ("hf://org/tiny-vit", f"hf://org/tiny-vit@{COMMIT}"):
        model = keras_vit.from_preset(handle)
        assert model.class_names == LABELS
        logits = model(_pixels(IMAGENET_MEAN, IMAGENET_STD)).numpy()
        assert _rel_err(logits, REFERENCE["transformers_vit"]) < 1e-5


def test_hub_handle_as_weights_gets_the_sources_numerics(hub_cache):
    model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=32, mlp_size=64, num_heads=2,
                          num_layers=2, num_classes=5, weights="hf://org/tiny-vit")
    assert model.get_layer("encoderblock_0").get_config()["gelu"] == "erf"
    assert _rel_err(model(IMAGES).numpy(), REFERENCE["transformers_vit"]) < 1e-5


def test_hub_handle_missing_from_the_offline_cache_is_one_line(hub_cache):
    with pytest.raises(CheckpointError, match=r"hf://org/other: cannot get it from the "
                                              r"Hugging Face hub") as error:
        keras_vit.from_preset("hf://org/other")
    assert "\n" not in str(error.value)


# ---- the checkpoint's preprocessing and labels travel ----

def test_preprocessing_and_labels_survive_a_keras_file_and_other_resolutions(tmp_path):
    model = keras_vit.from_preset(_timm_dir(tmp_path))
    path = str(tmp_path / "preset.keras")
    model.save(path)
    reloaded = keras.saving.load_model(path)  # safe mode
    assert isinstance(reloaded.get_layer("rescaling"), PixelNormalization)
    assert reloaded.class_names == LABELS
    assert model_preprocessing(reloaded) == model_preprocessing(model)
    pixels = _pixels(IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_array_equal(reloaded(pixels).numpy(), model(pixels).numpy())
    assert model_preprocessing(keras_vit.model_at_resolution(model, 64)) == \
        model_preprocessing(model)


def test_default_models_keep_the_original_rescaling():
    model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=32, mlp_size=64, num_heads=2,
                          num_layers=1, num_classes=5, mean=0.5, std=(0.5, 0.5, 0.5))
    layer = model.get_layer("rescaling")
    assert type(layer) is keras.layers.Rescaling and layer.get_config()["scale"] == 1 / 127.5
    assert model_preprocessing(model)["interpolation"] == "bilinear"


def _image_file(tmp_path):
    path = tmp_path / "image.png"
    rng = np.random.default_rng(0)
    path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (45, 51, 3), np.uint8)).numpy())
    return str(path)


def test_predict_a_hub_directory_and_handle_labels_with_its_classes(tmp_path, hub_cache, capsys):
    from training.cli import main
    image = _image_file(tmp_path)
    for spec in (_timm_dir(tmp_path), "hf://org/tiny-vit"):
        assert main(["predict", spec, image, "--json", "--top-k", "5"]) == 0
        row = json.loads(capsys.readouterr().out)["predictions"][0]
        assert sorted(row["labels"]) == sorted(LABELS)
        assert [LABELS[c] for c in row["classes"]] == row["labels"]


def test_predict_resizes_with_the_checkpoints_interpolation(tmp_path):
    from export.model_sources import load_pixels
    model = keras_vit.from_preset(_timm_dir(tmp_path))
    image = _image_file(tmp_path)
    data = open(image, "rb").read()
    bicubic = keras_vit.preprocess_image(tf.constant(data), 32, interpolation="bicubic").numpy()
    bilinear = keras_vit.preprocess_image(tf.constant(data), 32).numpy()
    assert np.abs(bicubic - bilinear).max() > 1.0
    np.testing.assert_array_equal(load_pixels(model, image, data), bicubic)


def test_serving_export_has_the_labels_preprocessing_and_interpolation(tmp_path):
    from export import client, export_saved_model
    model = keras_vit.from_preset(_timm_dir(tmp_path))
    version = export_saved_model(model, str(tmp_path / "models"), name="preset", warmup=False)
    data = open(_image_file(tmp_path), "rb").read()
    row = client.predict_saved_model(version, [data])[0]
    pixels = keras_vit.preprocess_image(tf.constant(data), 32, interpolation="bicubic")
    want = tf.nn.softmax(model(pixels[None])).numpy()[0]
    assert row["labels"] == [LABELS[c] for c in row["classes"]]
    np.testing.assert_allclose(row["scores"], np.sort(want)[::-1][:len(row["scores"])],
                               atol=1e-6)
