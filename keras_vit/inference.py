"""An inference copy of a keras_vit model: another compute dtype, LayerNorm and attention
scale folded into the projections, dropout removed; and the model's class probabilities, the
reference every prediction and exported file is compared with."""
from __future__ import annotations

import keras
import numpy as np

from keras_vit.layers.transformer import TransformerBlock, fold_block_weights
from keras_vit.model_ops import rebuild
from keras_vit.runtime import weights_assumed_frozen

# Layers that stay float32 under every policy (the model's outputs are float32).
FLOAT32_LAYERS = ("head", "features", "projection")
DTYPES = ("float32", "bfloat16", "float16")


def inference_model(model: keras.Model, dtype: str = "float32", fold: bool = True,
                    name=None) -> keras.Model:
    """Returns a copy of a keras_vit ``model`` made for inference (dropout and stochastic
    depth rates set to 0).

    The copy computes the same function up to rounding (tested: float32 within 1e-5 of the
    original, bfloat16 within bfloat16 tolerance and the same top-1). It is the model the
    frozen serving export (``export_saved_model(..., frozen=True)``) is made from; it can
    also be used directly, e.g. ``inference_model(model, "bfloat16").predict(images)``.
    Not for training: a folded model has no LayerNorm weights to train.

    Args:
        model: a keras_vit model.
        dtype: the copy's weights and compute dtype (``"float32"``, ``"bfloat16"`` or
            ``"float16"``): weights are *stored* in it, so no per-call casts from float32
            variables; the head stays float32 and the outputs are float32.
        fold: every :class:`~keras_vit.layers.TransformerBlock` becomes its ``folded`` form
            (LayerNorm scale/offset and 1/sqrt(head_dim) inside the next projections,
            computed in float64 before the cast).
        name: the copy's name (default: the model's).

    Returns:
        The copy, a ``keras.Model``.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    blocks = {layer.name for layer in model.layers if isinstance(layer, TransformerBlock)}
    if not blocks:
        raise ValueError(f"{model.name!r} has no TransformerBlock layers: not a keras_vit model")

    def edit(layer_config):
        if layer_config.get("name") not in FLOAT32_LAYERS and "dtype" in layer_config:
            layer_config["dtype"] = dtype
        for rate in ("dropout_rate", "attention_dropout_rate", "drop_path_rate", "rate"):
            if rate in layer_config:
                layer_config[rate] = 0.0
        if layer_config.get("name") in blocks:
            layer_config["folded"] = bool(fold) or bool(layer_config.get("folded"))

    def convert(layer, weights):
        if layer.name in blocks and fold and not layer.folded:
            return fold_block_weights(weights, layer.num_heads)
        return weights

    return rebuild(model, edit, convert, name=name)


def model_outputs(model: keras.Model, images) -> np.ndarray:
    """``model``'s float32 outputs (logits, or a headless tower's embeddings) for ``images``
    (raw pixels at its resolution) as a float64 array, without dropout. Under
    ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` the model runs as a graph (``predict``), since
    eager kernels shared between models would keep another model's weights."""
    if weights_assumed_frozen():  # eager kernels would keep another model's cached weights
        return np.asarray(model.predict(images, verbose=0), np.float64)
    return np.asarray(model(images, training=False), np.float64)


def class_probabilities(model: keras.Model, images) -> np.ndarray:
    """Softmax of ``model``'s logits for ``images`` (raw pixels at its resolution), computed
    in float64 with numpy from the model's float32 logits (:func:`model_outputs`): the
    reference that predictions, exported files and figures are compared with.

    Args:
        model: a keras_vit classifier (logits out).
        images: (batch, height, width, 3) pixels in [0, 255].

    Returns:
        A float64 array of shape (batch, classes) whose rows sum to 1.
    """
    logits = model_outputs(model, images)
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)
