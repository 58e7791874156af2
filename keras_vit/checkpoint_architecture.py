"""A model for an original ``.npz`` checkpoint without naming its architecture: the
hyper-parameters are read from the arrays' shapes (headers only, no data)."""
from __future__ import annotations

import math
import re
from typing import Optional

import keras

from keras_vit.checkpoints import CheckpointError, read_npz_index

_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_UNIT = re.compile(r"^block(\d+)/unit(\d+)/")


def _shape(index, key, path):
    if key not in index:
        raise CheckpointError(f"{path} has no {key!r}: not an original ViT checkpoint")
    return tuple(index[key].shape)


def checkpoint_architecture(path: str, image_size=None) -> dict:
    """The :func:`keras_vit.ViT` arguments that fit an original ``.npz`` checkpoint.

    Patch size, width, channels, heads, MLP width, depth, ResNet stages and width, class
    token, pre-logits width and class count come from the array shapes. The image size
    is the position-embedding grid times the pixels per token when the grid is square;
    a non-square grid needs ``image_size``.

    Args:
        path: an original ``.npz`` checkpoint.
        image_size: int or (height, width) to build for (the position embeddings are
            resized when it differs from the checkpoint's grid).

    Returns:
        A dict of keyword arguments for :func:`keras_vit.ViT` (without ``weights``).
    """
    index = read_npz_index(path)
    patch, _, channels, hidden = _shape(index, "embedding/kernel", path)
    query = _shape(index, "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/"
                          "kernel", path)
    mlp = _shape(index, "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", path)[1]
    layers = 1 + max(int(m.group(1)) for m in map(_BLOCK.match, index) if m)
    units = {}
    for match in filter(None, map(_UNIT.match, index)):
        stage, unit = int(match.group(1)), int(match.group(2))
        units[stage] = max(units.get(stage, 0), unit)
    args = dict(patch_size=int(patch), hidden_size=int(hidden), mlp_size=int(mlp),
                num_heads=int(query[1]), num_layers=layers,
                classifier="token" if "cls" in index else "gap",
                num_classes=int(_shape(index, "head/bias", path)[0]))
    stride = int(patch)
    if units:
        args["resnet_stages"] = tuple(units[s] for s in sorted(units))
        args["resnet_width"] = _shape(index, "conv_root/kernel", path)[-1] // 64
        stride *= 4 * 2 ** (len(units) - 1)
    else:
        args["channels"] = int(channels)
    if "pre_logits/bias" in index:
        args["representation_size"] = int(index["pre_logits/bias"].shape[0])
    if image_size is None:
        tokens = _shape(index, "Transformer/posembed_input/pos_embedding", path)[1]
        side = math.isqrt(tokens - int("cls" in index))
        if side * side != tokens - int("cls" in index):
            raise CheckpointError(f"{path}: the position embeddings of {tokens} tokens are not "
                                  "a square grid; give the image size")
        image_size = side * stride
    args["image_size"] = image_size
    return args


def model_from_checkpoint(path: str, variant: Optional[str] = None,
                          image_size=None) -> keras.Model:
    """A keras_vit model built for and loaded from an original ``.npz`` checkpoint.

    Args:
        path: an original ``.npz`` checkpoint.
        variant: a builder name such as ``"ViT_B16"``; None: the architecture read from the
            checkpoint (:func:`checkpoint_architecture`).
        image_size: int or (height, width); default: the checkpoint's.

    Returns:
        The loaded ``keras.Model``.
    """
    import keras_vit

    args = checkpoint_architecture(path, image_size)
    if variant is None:
        return keras_vit.ViT(weights=path, name="vit", **args)
    if variant not in keras_vit.VARIANTS:
        raise ValueError(f"unknown model {variant!r}: expected one of "
                         f"{', '.join(sorted(keras_vit.VARIANTS))}")
    return getattr(keras_vit, variant)(
        weights=path, image_size=args["image_size"], num_classes=args["num_classes"],
        classifier=args["classifier"], representation_size=args.get("representation_size"))
