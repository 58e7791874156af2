"""Operations on a built keras_vit model: another resolution, a new head, the variables that
skip weight decay, and :func:`rebuild`, the one "edit the config, rebuild, copy the weights"
step they (and :func:`keras_vit.inference_model`) share.
"""
from __future__ import annotations

import re
from typing import Callable, List, Optional

import keras
import numpy as np

from keras_vit.models import has_head, model_image_size
from keras_vit.position_embeddings import resize_position_embeddings, to_pair
from keras_vit.variants import ViTConfig, check_fits

# Name patterns of the weights that weight decay leaves alone (matched with ``re.search``
# against variable names, as ``keras.optimizers.AdamW.exclude_from_weight_decay(var_names=)``
# does): biases, LayerNorm / GroupNorm scales and offsets (and LayerScale gammas), position
# embeddings, class, distillation and register tokens, the MAP head's probe (as timm).
NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "pos_embedding", "^cls$", "^dist$", "^registers$",
                   "^probe$"]

# (source layer, its weights as numpy arrays) -> the copy's weights; None keeps the copy's
# freshly initialised weights.
WeightConverter = Callable[[keras.layers.Layer, List[np.ndarray]], Optional[List[np.ndarray]]]


def rebuild(model: keras.Model, edit_layer_config: Callable[[dict], None] = None,
            convert_weights: WeightConverter = None, name: Optional[str] = None) -> keras.Model:
    """A new model from ``model``'s config with edits, its weights copied layer by layer.

    Every layer of the copy must receive exactly the weights it has (same count, same
    shapes); anything else raises a ``ValueError`` naming the layer, so a config edit and a
    weight conversion that disagree can never truncate or misplace weights silently.

    Args:
        model: a functional keras_vit model.
        edit_layer_config: called with each layer's ``config`` dict, edits it in place.
        convert_weights: ``(source layer, numpy weights) -> weights for the copy``, or None
            to keep the copy's fresh initialisation for that layer. Default: copy as they are.
        name: the copy's name (default: the source's).

    Returns:
        The new ``keras.Model``.
    """
    config = model.get_config()
    config.pop("class_names", None)  # the copy's head may be another (with_new_head)
    if name:
        config["name"] = name
    if edit_layer_config is not None:
        for layer in config["layers"]:
            edit_layer_config(layer["config"])
    copy = keras.Model.from_config(config)
    for layer in model.layers:
        weights = layer.get_weights()
        if convert_weights is not None:
            weights = convert_weights(layer, weights)
        if weights is not None:
            _assign_layer(copy.get_layer(layer.name), weights, model.name)
    return copy


def _assign_layer(target: keras.layers.Layer, weights: List[np.ndarray], source: str) -> None:
    if len(target.weights) != len(weights):
        raise ValueError(f"rebuilding {source!r}: layer {target.name!r} has "
                         f"{len(target.weights)} weights in the copy but {len(weights)} were "
                         "given")
    for variable, value in zip(target.weights, weights):
        if tuple(variable.shape) != tuple(np.shape(value)):
            raise ValueError(f"rebuilding {source!r}: {variable.path} has shape "
                             f"{tuple(variable.shape)}, the value given has {np.shape(value)}")
    for variable, value in zip(target.weights, weights):
        variable.assign(value)  # numpy float32/64: cast to the copy's variable dtype


def model_at_resolution(model: keras.Model, image_size) -> keras.Model:
    """A copy of ``model`` built for ``image_size``: the paper's fine-tune-at-higher-resolution
    step (section 3.2), position embeddings resized with the original aligned-corners
    bilinear interpolation. The model itself already accepts other sizes at run time (same
    numbers); a copy at the new size is what exports and fine-tuning at that size want.

    Args:
        model: a keras_vit model.
        image_size: int or (height, width), a multiple of the patch size (times the ResNet
            stride for hybrids).

    Returns:
        ``model`` itself when it is built for that size already, else the copy.
    """
    size = to_pair(image_size, "image_size")
    if size == model_image_size(model):
        return model
    stride = model.get_layer("image_validation").multiple_of
    if size[0] % stride or size[1] % stride:
        raise ValueError(f"image_size {size} is not a multiple of {stride} (the patch size"
                         f"{', times the ResNet stride' if stride != _patch(model) else ''})")
    grid = [size[0] // stride, size[1] // stride]
    check_fits(model_config(model), size, model.get_layer("posembed_input").num_prefix_tokens)

    def edit(config):
        if config.get("name") == "posembed_input":
            config["grid_size"] = grid

    def convert(layer, weights):
        if layer.name != "posembed_input":
            return weights
        return [resize_position_embeddings(value, grid, layer.position_prefix_tokens,
                                           old_grid=layer.grid_size)
                if variable is layer.pos_embedding else value
                for variable, value in zip(layer.weights, weights)]

    return rebuild(model, edit, convert)


def model_config(model: keras.Model) -> ViTConfig:
    """The architecture (:class:`keras_vit.ViTConfig`) of a built keras_vit model."""
    names = [layer.name for layer in model.layers]
    blocks = [name for name in names if re.fullmatch(r"encoderblock_\d+", name)]
    first = model.get_layer(blocks[0]) if blocks else None
    units = [re.fullmatch(r"block(\d+)_unit\d+", name) for name in names]
    stages = [sum(1 for u in units if u and int(u[1]) == s + 1)
              for s in range(max((int(u[1]) for u in units if u), default=0))]
    width = model.get_layer("conv_root").filters // 64 if "conv_root" in names else 1
    return ViTConfig(patch_size=_patch(model),
                     hidden_size=model.get_layer("embedding").hidden_size,
                     mlp_size=first.mlp_size if first else 0,
                     num_heads=first.num_heads if first else 1, num_layers=len(blocks),
                     resnet_stages=tuple(stages) or None, resnet_width=width)


def _patch(model):
    return model.get_layer("embedding").patch_size


def with_new_head(model: keras.Model, num_classes: int) -> keras.Model:
    """A copy of ``model`` with a fresh zero-initialised head of ``num_classes`` outputs
    (the paper's transfer step, section 3.1); every other weight is copied.

    Args:
        model: a keras_vit model with a head (``include_top=True``).
        num_classes: the new class count.

    Returns:
        The copy.
    """
    if not has_head(model):
        raise ValueError(f"model {model.name!r} has no head (built with include_top=False)")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")

    heads = ("head", "head_dist")  # (DeiT distilled has two)

    def edit(config):
        if config.get("name") in heads:
            config["units"] = int(num_classes)
            config["kernel_initializer"] = "zeros"
            config["bias_initializer"] = "zeros"

    return rebuild(model, edit, lambda layer, w: None if layer.name in heads else w)


def no_weight_decay_variables(model: keras.Model) -> list:
    """The trainable variables of ``model`` that weight decay leaves alone (biases, norms,
    position embeddings, class token): those matching :data:`NO_WEIGHT_DECAY`.

    For ``keras.optimizers.AdamW`` pass the patterns:
    ``optimizer.exclude_from_weight_decay(var_names=keras_vit.NO_WEIGHT_DECAY)``.

    Args:
        model: a keras_vit model.

    Returns:
        A list of ``keras.Variable``.
    """
    return [v for v in model.trainable_variables
            if any(re.search(pattern, v.name) for pattern in NO_WEIGHT_DECAY)]
