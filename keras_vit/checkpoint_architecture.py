"""A model for a checkpoint without naming its architecture: the hyper-parameters are read
from the arrays' shapes (headers only, no data) of an original ``.npz`` or a timm
``.safetensors`` file, or from a transformers model directory's ``config.json``."""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Tuple

import keras

from keras_vit.checkpoints import (CheckpointError, read_npz_index, read_safetensors_index,
                                   transformers_weights_file)
from keras_vit.position_embeddings import to_pair
from keras_vit.sources import read_transformers_config, source_numerics

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


# ---- The Hugging Face hub's layouts (timm .safetensors, transformers directories). ----

# timm's ViT widths and their head counts (timm's configs; ViT-H/14 has 80-wide heads).
_TIMM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_TIMM_UNIT = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.")


def _square_image_size(tokens, prefix, stride, path, what):
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise CheckpointError(f"{path}: the {what} of {tokens} tokens are not a square grid; "
                              "give the image size")
    return side * stride


def timm_architecture(path: str, classifier: Optional[str] = None,
                      num_heads: Optional[int] = None, image_size=None) -> dict:
    """The :func:`keras_vit.ViT` arguments that fit a timm ViT ``.safetensors`` checkpoint.

    Width, depth, MLP width, patch size, class count, the hybrid's ResNet stages and the
    image size come from the tensor shapes (header only). Two things a timm file does not
    say: the head count (timm's fused qkv weight does not split it; known widths 192, 384,
    768, 1024, 1280 get timm's 3, 6, 12, 16, 16, others need ``num_heads``) and the pooling
    (a file without ``cls_token`` is average-pooled, ``"gap"``; with one, ``"token"`` unless
    ``classifier`` says otherwise). timm's ``fc_norm`` (LayerNorm after the pooling, the
    default of ``global_pool="avg"``) is refused: keras_vit normalises before pooling, as
    timm's ``fc_norm=False`` models and the original do.

    Args:
        path: the ``.safetensors`` file.
        classifier: ``"token"`` or ``"gap"``; None: from the presence of ``cls_token``.
        num_heads: attention heads; None: timm's for the width (see above).
        image_size: int or (height, width); None: the position embeddings' square grid.

    Returns:
        A dict of keyword arguments for :func:`keras_vit.ViT` (without ``weights``);
        the numerics are timm's (``ViT(weights=path)`` picks them).
    """
    index = read_safetensors_index(path)

    def shape(key):
        if key not in index:
            raise CheckpointError(f"{path} has no {key!r}: not a timm VisionTransformer "
                                  "checkpoint")
        return index[key].shape

    if any(key.startswith("fc_norm.") for key in index):
        raise CheckpointError(f"{path}: timm's fc_norm (LayerNorm after average pooling) is "
                              "not supported; keras_vit normalises before pooling (timm's "
                              "fc_norm=False)")
    hidden, channels, patch, _ = shape("patch_embed.proj.weight")
    if num_heads is None:
        if hidden not in _TIMM_HEADS:
            raise CheckpointError(f"{path}: width {hidden} is not one of timm's named ViTs "
                                  "and a timm file does not record the head count; pass "
                                  "num_heads")
        num_heads = _TIMM_HEADS[hidden]
    has_cls = "cls_token" in index
    args = dict(patch_size=int(patch), hidden_size=int(hidden),
                mlp_size=int(shape("blocks.0.mlp.fc1.weight")[0]), num_heads=int(num_heads),
                num_layers=1 + max(int(m.group(1)) for m in map(_TIMM_BLOCK.match, index) if m),
                classifier=classifier or ("token" if has_cls else "gap"))
    if "head.weight" in index:
        args["num_classes"] = int(index["head.weight"].shape[0])
    else:
        args["include_top"] = False
    units = {}
    for match in filter(None, map(_TIMM_UNIT.match, index)):
        stage, unit = int(match.group(1)), int(match.group(2))
        units[stage] = max(units.get(stage, 0), unit + 1)
    stride = int(patch)
    if units:
        args["resnet_stages"] = tuple(units[s] for s in sorted(units))
        args["resnet_width"] = shape("patch_embed.backbone.stem.conv.weight")[0] // 64
        stride *= 4 * 2 ** (len(units) - 1)
    else:
        args["channels"] = int(channels)
    if image_size is None:
        image_size = _square_image_size(shape("pos_embed")[1], int(has_cls), stride, path,
                                        "position embeddings")
    args["image_size"] = image_size
    return args


def from_timm(path: str, classifier: Optional[str] = None, num_heads: Optional[int] = None,
              image_size=None, **kwargs) -> keras.Model:
    """A keras_vit model built for and loaded from a timm ViT ``.safetensors`` checkpoint,
    computing with timm's numerics (exact GELU; for hybrids GroupNorm epsilon 1e-5 and
    weight standardisation ``/ sqrt(var + 1e-8)``).

    Args:
        path: the ``.safetensors`` file, e.g. of ``vit_base_patch16_224.augreg2_in21k_ft_in1k``
            or ``vit_small_r26_s32_224``.
        classifier, num_heads, image_size: see :func:`timm_architecture`.
        **kwargs: other :func:`keras_vit.ViT` arguments (they override the checkpoint's).

    Returns:
        The loaded ``keras.Model``. Like timm's ViTs with mean = std = 0.5 (the AugReg and
        original weights), it takes [0, 255] pixels; for checkpoints trained with ImageNet
        mean / std, pass ``include_preprocessing=False`` and normalise the input yourself.
    """
    import keras_vit

    args = timm_architecture(path, classifier, num_heads, image_size)
    args.update(kwargs)
    return keras_vit.ViT(weights=path, **{"name": "vit", **args})


def transformers_architecture(directory: str, image_size=None) -> Tuple[dict, list]:
    """The :func:`keras_vit.ViT` arguments and the class names of a transformers ViT model
    directory, from its ``config.json`` (width, depth, heads, MLP width, patch and image
    size, channels, LayerNorm epsilon, GELU variant, ``id2label``) and the checkpoint's
    keys (whether it has a classifier, or the pre-logits ``pooler`` of a ``ViTModel``).

    Args:
        directory: the model directory (``config.json`` + ``model.safetensors``).
        image_size: int or (height, width); None: the config's.

    Returns:
        ``(arguments, class_names)``: keyword arguments for :func:`keras_vit.ViT` (without
        ``weights``) and the class names in class-index order (empty without a classifier).
    """
    config = read_transformers_config(directory)
    index = read_safetensors_index(transformers_weights_file(directory))
    cfg_path = os.path.join(os.fspath(directory), "config.json")

    def square(key):
        value = config.get(key, 224 if key == "image_size" else 16)
        value = to_pair(value, key) if isinstance(value, (int, list, tuple)) else None
        if value is None:
            raise CheckpointError(f"{cfg_path}: {key} {config.get(key)!r} is not an int or a "
                                  "pair")
        return value

    patch = square("patch_size")
    if patch[0] != patch[1]:
        raise CheckpointError(f"{cfg_path}: patch_size {patch} is not square")
    numerics = source_numerics(directory)
    args = dict(patch_size=patch[0], hidden_size=int(config.get("hidden_size", 768)),
                mlp_size=int(config.get("intermediate_size", 3072)),
                num_heads=int(config.get("num_attention_heads", 12)),
                num_layers=int(config.get("num_hidden_layers", 12)),
                channels=int(config.get("num_channels", 3)), classifier="token",
                image_size=square("image_size") if image_size is None else image_size,
                gelu=numerics["gelu"], layer_norm_epsilon=numerics["layer_norm_epsilon"])
    names = []
    if "classifier.weight" in index:
        labels = config.get("id2label") or {}
        count = int(index["classifier.weight"].shape[0])
        try:
            names = [str(labels[str(i)]) if str(i) in labels else str(labels[i])
                     for i in range(count)]
        except KeyError:
            raise CheckpointError(f"{cfg_path}: id2label does not name the {count} classes of "
                                  "the classifier") from None
        args["num_classes"] = count
    else:
        args["include_top"] = False
        if "pooler.dense.weight" in index:
            args["representation_size"] = int(index["pooler.dense.weight"].shape[0])
    return args, names


def from_transformers(directory: str, image_size=None, **kwargs) -> keras.Model:
    """A keras_vit model built from a transformers ViT model directory's ``config.json``
    and loaded from its ``model.safetensors``, e.g. a download of ``google/vit-base-patch16-224``
    (``ViTForImageClassification``; a ``ViTModel`` gives a model without head).

    The model computes what transformers computes: exact GELU (``hidden_act="gelu"``) and
    the config's LayerNorm epsilon (1e-12 by default). Its class names (from ``id2label``)
    are set as ``model.class_names`` (a plain attribute: not saved with the model; pass them
    as ``labels`` to the export).

    Args:
        directory: the model directory.
        image_size: int or (height, width); None: the config's (position embeddings are
            resized for another size).
        **kwargs: other :func:`keras_vit.ViT` arguments (they override the config's).

    Returns:
        The loaded ``keras.Model``.
    """
    import keras_vit

    args, names = transformers_architecture(directory, image_size)
    args.update(kwargs)
    model = keras_vit.ViT(weights=directory, **{"name": "vit", **args})
    model.class_names = names if args.get("include_top", True) else []
    return model
