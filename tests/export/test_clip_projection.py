"""CLIP image towers end in their projection to the image-text space (timm: ``head`` with a
zero bias; transformers: ``visual_projection``): an embedding output, not a classifier
head. The model's numbers are those of the checkpoint (the references of the fixtures);
only the kind of output changes: the export serves ``embedding``, never ``probabilities``."""
import os

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_vit
from export import export_saved_model
from export.saved_model import read_export_info
from keras_vit.inspection import endpoints_model, explain
from keras_vit.models import has_head
from tests.conftest import REPO

FAMILY = os.path.join(REPO, "tests", "fixtures", "family")
TRANSFORMERS = os.path.join(REPO, "tests", "fixtures", "transformers_family")
FAMILY_REF = np.load(os.path.join(FAMILY, "reference.npz"))
TRANSFORMERS_REF = np.load(os.path.join(TRANSFORMERS, "reference.npz"))
# timm's hub config of OpenAI's CLIP tower: a projection (num_classes 512 there), no labels.
OPENAI = {"architecture": "vit_base_patch16_clip_224.openai", "num_classes": 5}


def _rel_err(out, ref):
    return float(np.abs(np.asarray(out) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def timm_tower(tmp_path_factory):
    """The timm CLIP fixture with its head bias zeroed (as timm converts CLIP's bias-free
    ``proj``), its file, and what timm computes for it (the reference minus the bias)."""
    from safetensors.numpy import load_file, save_file
    tensors = load_file(os.path.join(FAMILY, "clip.safetensors"))
    bias = tensors["head.bias"].astype(np.float32)
    tensors["head.bias"] = np.zeros_like(tensors["head.bias"])
    path = str(tmp_path_factory.mktemp("clip") / "clip_openai.safetensors")
    save_file(tensors, path)
    model = keras_vit.from_timm(path, config=OPENAI, num_heads=2)
    return model, path, FAMILY_REF["clip"] - bias


@pytest.fixture(scope="module")
def transformers_tower():
    """``CLIPVisionModelWithProjection`` (its output: ``image_embeds``)."""
    return keras_vit.from_preset(os.path.join(TRANSFORMERS, "clip_projection"))


def _is_projected_tower(model, width):
    names = {layer.name for layer in model.layers}
    return ("projection" in names and "head" not in names and not has_head(model)
            and not model.get_layer("projection").use_bias
            and model.output_shape == (None, width))


def test_timm_clip_head_without_labels_or_bias_is_the_projection(timm_tower):
    model, _, want = timm_tower
    assert _is_projected_tower(model, 5)
    assert _rel_err(model(FAMILY_REF["images"].astype("float32")), want) < 1e-5


def test_transformers_visual_projection_is_the_projection(transformers_tower):
    assert _is_projected_tower(transformers_tower, 8)
    images = TRANSFORMERS_REF["images"].astype("float32")
    assert _rel_err(transformers_tower(images), TRANSFORMERS_REF["clip_projection"]) < 1e-5


def test_fine_tuned_clip_stays_a_classifier(timm_tower):
    _, path, want = timm_tower
    config = dict(OPENAI, architecture="vit_base_patch16_clip_224.laion2b_ft_in1k")
    model = keras_vit.from_timm(path, config=config, num_heads=2)
    assert has_head(model) and "projection" not in {layer.name for layer in model.layers}
    assert _rel_err(model(FAMILY_REF["images"].astype("float32")), want) < 1e-5


def test_a_classifier_bias_refuses_to_load_as_a_projection():
    with pytest.raises(keras_vit.CheckpointError,
                       match="head.bias is not zero: the head is a classifier"):
        keras_vit.from_timm(os.path.join(FAMILY, "clip.safetensors"), config=OPENAI,
                            num_heads=2, projection_dim=5)


@pytest.mark.parametrize("source", ["timm", "transformers"])
def test_projected_tower_exports_its_embedding(source, timm_tower, transformers_tower,
                                               tmp_path):
    model, ref = ((timm_tower[0], timm_tower[2]) if source == "timm" else
                  (transformers_tower, TRANSFORMERS_REF["clip_projection"]))
    directory = export_saved_model(model, str(tmp_path), name=source, warmup=False)
    assert read_export_info(directory)["outputs"] == "embedding"
    loaded = tf.saved_model.load(directory)
    images = (FAMILY_REF if source == "timm" else TRANSFORMERS_REF)["images"]
    out = loaded.signatures["serving_images"](images=tf.constant(images, tf.float32))
    assert set(out) == {"embedding"}  # no probabilities, classes or scores
    assert _rel_err(out["embedding"].numpy(), ref) < 1e-5


def test_projection_survives_a_keras_file_and_inspection(timm_tower, tmp_path):
    model, _, want = timm_tower
    path = str(tmp_path / "clip.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    images = FAMILY_REF["images"].astype("float32")
    assert _is_projected_tower(loaded, 5)
    assert _rel_err(loaded(images), want) < 1e-5
    outputs = endpoints_model(loaded)(images)
    assert "logits" not in outputs and outputs["pre_logits"].shape == (len(images), 16)
    assert _rel_err(outputs["projection"], want) < 1e-5
    assert set(explain(loaded, images[:1])) == {"rollout"}
