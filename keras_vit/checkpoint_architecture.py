"""A model for a checkpoint without naming its architecture: the hyper-parameters are read
from the arrays' shapes (headers only, no data) of an original ``.npz`` or a timm
``.safetensors`` file, or from a transformers model directory's ``config.json``."""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Tuple

import keras
import numpy as np

from keras_vit.checkpoints import (POS_EMBEDDING_KEY, CheckpointError, check_bounds,
                                   check_dtypes, check_position_grid, read_npz_index,
                                   read_safetensors_arrays, read_safetensors_index,
                                   transformers_prefix, transformers_weights_file)
from keras_vit.position_embeddings import to_pair
from keras_vit.checkpoints.timm_keys import (timm_architecture_name, timm_config_numerics,
                                             timm_model_args)
from keras_vit.checkpoints.transformers_keys import LAYOUTS
from keras_vit.sources import (NUMERICS, TIMM, check_pooler_act, read_transformers_config,
                               source_numerics)
from keras_vit.variants import VARIANTS, resnet_stride

# Blocks and ResNet units are counted from one key each complete one has (a stray key such
# as "Transformer/encoderblock_2999/junk" must not make a 3,000-block model); any other key
# with an index must fall inside the count. Stages and units are 1-based in the original.
_BLOCK = re.compile(r"^Transformer/encoderblock_(\d+)/")
_FULL_BLOCK = re.compile(
    r"^Transformer/encoderblock_(\d+)/MultiHeadDotProductAttention_1/query/kernel$")
_UNIT = re.compile(r"^block(\d+)/unit(\d+)/")
_FULL_UNIT = re.compile(r"^block(\d+)/unit(\d+)/conv1/kernel$")
_NOT_ORIGINAL = "not an original ViT checkpoint"


def _npz_depth(index, path) -> int:
    """The number of complete blocks; a key of any other block is refused."""
    depth = _count([int(m.group(1)) for m in map(_FULL_BLOCK.match, index) if m], path,
                   "blocks", "'Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
                             "query/kernel'")
    _refuse_outside(index, _BLOCK, depth, path, "blocks (complete blocks have "
                    "'.../MultiHeadDotProductAttention_1/query/kernel')")
    return depth


def _npz_units(index, path) -> Tuple[int, ...]:
    """Units per ResNet stage (empty for a plain ViT), counted from complete units."""
    units = {}
    for match in filter(None, map(_FULL_UNIT.match, index)):
        units.setdefault(int(match.group(1)) - 1, []).append(int(match.group(2)) - 1)
    stages = _count(units, path, "stages (0-based)", "'block{s}/unit{u}/conv1/kernel'")
    counts = tuple(_count(units[s], path, f"units of stage {s + 1} (0-based)",
                          f"'block{s + 1}/unit{{u}}/conv1/kernel'") for s in range(stages))
    for key in sorted(index):
        match = _UNIT.match(key)
        if match and not (1 <= int(match.group(1)) <= stages
                          and 1 <= int(match.group(2)) <= counts[int(match.group(1)) - 1]):
            raise CheckpointError(f"{path}: key {key!r} is outside the file's {stages} stage(s) "
                                  f"of {counts} units (complete units have "
                                  "'block{s}/unit{u}/conv1/kernel')")
    return counts


def _check_position_embedding(shape, key, path, hidden, prefix) -> int:
    """Position embeddings (1, tokens, width): the width first, then the grid's bound
    (checked from the header, before any model is built). Returns the token count."""
    if shape[0] != 1 or shape[2] != hidden:
        raise CheckpointError(f"{path}: {key!r} has shape {shape}, expected (1, tokens, "
                              f"{hidden}) (the width of the patch embedding)")
    check_position_grid(path, key, shape[1], prefix)
    return shape[1]


def checkpoint_architecture(path: str, image_size=None) -> dict:
    """The :func:`keras_vit.ViT` arguments that fit an original ``.npz`` checkpoint.

    Patch size, width, channels, heads, MLP width, depth (complete blocks), ResNet stages
    and width, class token, pre-logits width and class count come from the array shapes,
    checked first (dtypes, ranks, :data:`keras_vit.checkpoints.ARCHITECTURE_BOUNDS`). The
    image size is the position grid times the pixels per token when the grid is square; a
    non-square grid needs ``image_size``.

    Args:
        path: an original ``.npz`` checkpoint.
        image_size: int or (height, width) to build for (the position embeddings are
            resized when it differs from the checkpoint's grid).

    Returns:
        A dict of keyword arguments for :func:`keras_vit.ViT` (without ``weights``).
    """
    index = read_npz_index(path)
    check_dtypes(index, path)

    def shape(key, rank):
        return _tensor_shape(index, key, path, rank, _NOT_ORIGINAL)

    kernel = shape("embedding/kernel", 4)  # HWIO
    patch, channels, hidden = kernel[0], kernel[2], kernel[3]
    if kernel[1] != patch or patch < 1:
        raise CheckpointError(f"{path}: 'embedding/kernel' of shape {kernel} gives patch size "
                              f"{kernel[:2]}; expected a square patch of at least 1 pixel")
    query_key = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"
    query = shape(query_key, 3)
    if query[0] != hidden or query[1] * query[2] != hidden:
        raise CheckpointError(f"{path}: {query_key} has shape {query}, expected ({hidden}, "
                              f"heads, {hidden} / heads)")
    args = dict(patch_size=patch, hidden_size=hidden, num_heads=query[1],
                mlp_size=shape("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", 2)[1],
                num_layers=_npz_depth(index, path),
                classifier="token" if "cls" in index else "gap",
                num_classes=shape("head/bias", 1)[0])
    bounds = {"width": hidden, "MLP width": args["mlp_size"], "depth": args["num_layers"],
              "patch size": patch, "channels": channels, "classes": args["num_classes"]}
    units = _npz_units(index, path)
    stride = patch
    if units:
        args["resnet_stages"] = units
        args["resnet_width"] = shape("conv_root/kernel", 4)[-1] // 64
        bounds.update({"ResNet stages": len(units), "ResNet units per stage": max(units),
                       "ResNet width": args["resnet_width"]})
        stride *= resnet_stride(units)
    else:
        args["channels"] = channels
    if "pre_logits/bias" in index:
        args["representation_size"] = shape("pre_logits/bias", 1)[0]
        bounds["width"] = max(hidden, args["representation_size"])
    check_bounds(path, bounds)
    _check_holds_blocks(index, _BLOCK, args, path)
    tokens = _check_position_embedding(shape(POS_EMBEDDING_KEY, 3), POS_EMBEDDING_KEY, path,
                                       hidden, int("cls" in index))
    args["image_size"] = image_size if image_size is not None else _square_image_size(
        tokens, int("cls" in index), stride, path, "position embeddings")
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
    from keras_vit import models

    args = checkpoint_architecture(path, image_size)
    if variant is None:
        return models.ViT(weights=path, name="vit", **args)
    if variant not in VARIANTS:
        raise ValueError(f"unknown model {variant!r}: expected one of "
                         f"{', '.join(sorted(VARIANTS))}")
    return getattr(models, variant)(
        weights=path, image_size=args["image_size"], num_classes=args["num_classes"],
        classifier=args["classifier"], representation_size=args.get("representation_size"))


# ---- The Hugging Face hub's layouts (timm .safetensors, transformers directories). ----

# timm's ViT widths and their head counts (timm's configs; ViT-H/14 has 80-wide heads).
_TIMM_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Blocks and units are counted from one key each has (a stray key such as "blocks.40.junk"
# must not make a 41-block model); any other key with an index must fall inside the count.
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_TIMM_FULL_BLOCK = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.weight$")
_TIMM_STAGE = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.(?:blocks\.(\d+)\.)?")
_TIMM_FULL_UNIT = re.compile(
    r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.conv1\.weight$")


def _tensor_shape(index, key, path, rank, missing):
    """The header shape of ``key``, which must exist and have ``rank`` dimensions."""
    if key not in index:
        raise CheckpointError(f"{path} has no {key!r}: {missing}")
    shape = tuple(int(d) for d in index[key].shape)
    if len(shape) != rank:
        raise CheckpointError(f"{path}: {key!r} has shape {shape}, expected {rank} dimensions")
    return shape


def _square_patch(shape, key, path) -> int:
    """The patch size of a PyTorch OIHW patch-embedding weight."""
    if shape[2] != shape[3] or shape[2] < 1:
        raise CheckpointError(f"{path}: {key!r} of shape {shape} gives patch size {shape[2:]}; "
                              "expected a square patch of at least 1 pixel")
    return shape[2]


def _count(numbers, path, what, counted_by) -> int:
    """How many ``what`` there are, given the indices found: they must be 0..n-1."""
    numbers = sorted(set(numbers))
    if numbers != list(range(len(numbers))):
        raise CheckpointError(f"{path}: the complete {what} are {what} "
                              f"{', '.join(map(str, numbers))} (counted by {counted_by}), not "
                              f"0..{len(numbers) - 1}")
    return len(numbers)


def _refuse_outside(index, pattern, count, path, what):
    """Raises for a key whose index (``pattern``'s group 1) is not below ``count``."""
    for key in sorted(index):
        match = pattern.match(key)
        if match and int(match.group(1)) >= count:
            raise CheckpointError(f"{path}: key {key!r} is outside the file's {count} {what}")


def _check_holds_blocks(index, pattern, args, path) -> None:
    """A file must declare at least the values of the blocks it describes (their four
    attention and two MLP matrices): one small key per block cannot make a deep, wide model
    (the blocks' other shapes are only checked once a model is built)."""
    width, mlp, depth = args["hidden_size"], args["mlp_size"], args["num_layers"]
    needed = depth * (4 * width * width + 2 * width * mlp)
    held = sum(math.prod(info.shape) for key, info in index.items() if pattern.match(key))
    if held < needed:
        raise CheckpointError(f"{path}: its blocks declare {held:,} values, but {depth} blocks "
                              f"of width {width} and MLP width {mlp} have {needed:,} weights: "
                              "an incomplete or hostile file?")


def _square_image_size(tokens, prefix, stride, path, what):
    side = math.isqrt(tokens - prefix)
    if side * side != tokens - prefix:
        raise CheckpointError(f"{path}: the {what} of {tokens} tokens are not a square grid; "
                              "give the image size")
    return side * stride


def timm_architecture(path: str, classifier: Optional[str] = None,
                      num_heads: Optional[int] = None, image_size=None,
                      config: Optional[dict] = None, numerics: Optional[dict] = None) -> dict:
    """The :func:`keras_vit.ViT` arguments that fit a timm ViT ``.safetensors`` checkpoint.

    Width, depth, MLP width, patch size, class count, the hybrid's ResNet stages and the
    image size come from the tensor shapes (header only). Two things a timm file does not
    say: the head count (timm's fused qkv weight does not split it; known widths 192, 384,
    768, 1024, 1280 get timm's 3, 6, 12, 16, 16, others need ``num_heads``) and the pooling
    (a file without ``cls_token`` is average-pooled, ``"gap"``; with one, ``"token"`` unless
    ``classifier`` or the config's ``global_pool`` says otherwise).

    The ViT family's options come from the tensors too (:func:`timm_family`): register and
    distillation tokens, LayerScale, a LayerNorm before the blocks, the patch bias, ``fc_norm``,
    attention pooling, position embeddings without the prefix. What they do not say (the
    GELU variant and LayerNorm epsilon of CLIP and SigLIP towers) comes from ``config``
    (:func:`keras_vit.checkpoints.timm_keys.timm_config_numerics`); without it such a file
    is refused, with what to pass.

    Args:
        path: the ``.safetensors`` file.
        classifier: ``"token"`` or ``"gap"``; None: from the presence of ``cls_token``.
        num_heads: attention heads; None: timm's for the width (see above).
        image_size: int or (height, width); None: the position embeddings' square grid.
        config: the checkpoint's parsed timm hub ``config.json`` (``"architecture"``,
            ``"model_args"``, ``"global_pool"``, ...), if any.
        numerics: ``gelu`` and ``layer_norm_epsilon`` the caller chose (they win over the
            config's; with both, a CLIP or SigLIP file needs no config).

    Returns:
        A dict of keyword arguments for :func:`keras_vit.ViT` (without ``weights``),
        with timm's numerics (``gelu``, ``layer_norm_epsilon``).
    """
    index = read_safetensors_index(path)
    check_dtypes(index, path)
    config = config or {}
    if num_heads is None and isinstance(timm_model_args(config).get("num_heads"), int):
        num_heads = timm_model_args(config)["num_heads"]
    args, bounds, channels = _timm_transformer(index, path, classifier, num_heads)
    stride = args["patch_size"] * _timm_resnet(index, path, args, bounds, channels)
    check_bounds(path, bounds)
    _check_holds_blocks(index, _TIMM_BLOCK, args, path)
    args.update(timm_family(index, path, config, classifier, numerics or {}))
    if "num_classes" in args and timm_projection(index, path, config):
        args["projection_dim"] = args.pop("num_classes")
    prefix = (int("cls_token" in index) + int(args["classifier"] == "distilled")
              + args.get("num_register_tokens", 0))
    tokens = _timm_shape(index, path, "pos_embed", 3)[1]
    if prefix and "embed_prefix" not in args:
        args["embed_prefix"] = _timm_embed_prefix(tokens, prefix, image_size, stride, path,
                                                  config)
    embedded = prefix if args.get("embed_prefix", True) else 0
    _check_position_embedding(_timm_shape(index, path, "pos_embed", 3), "pos_embed", path,
                              args["hidden_size"], embedded)
    if image_size is None:
        image_size = _square_image_size(tokens, embedded, stride, path, "position embeddings")
    args["image_size"] = image_size
    return args


def timm_family(index, path: str, config: dict, classifier: Optional[str],
                chosen: Optional[dict] = None) -> dict:
    """The ViT family's :func:`keras_vit.ViT` arguments of a timm file (non-default ones
    only), the classifier, and timm's numerics (:func:`timm_config_numerics`)."""
    family = {}
    if "reg_token" in index:
        family["num_register_tokens"] = _timm_shape(index, path, "reg_token", 3)[1]
    for key, option, value in (("blocks.0.ls1.gamma", "layer_scale", True),
                               ("norm_pre.weight", "pre_norm", True),
                               ("fc_norm.weight", "fc_norm", True)):
        if key in index:
            family[option] = value
    if "patch_embed.proj.bias" not in index:
        family["patch_bias"] = False
    no_embed_class = timm_model_args(config).get("no_embed_class")
    if isinstance(no_embed_class, bool):
        family["embed_prefix"] = not no_embed_class
    family["classifier"] = classifier or _timm_classifier(index, path, config, family)
    if "cls_token" in index and family["classifier"] in ("gap", "map"):
        family["class_token"] = True  # timm's average / attention pooling beside a class token
    numerics = {**NUMERICS[TIMM], **timm_config_numerics(config, path), **(chosen or {})}
    given = {"gelu", "layer_norm_epsilon"} <= set(chosen or {})
    if not (config or given) and ("norm_pre.weight" in index or "attn_pool.latent" in index):
        raise CheckpointError(
            f"{path}: a CLIP or SigLIP image tower's GELU variant and LayerNorm epsilon are "
            "not in its tensors; pass config= (its timm config.json, parsed) or gelu= and "
            "layer_norm_epsilon=")
    family.update(gelu=numerics["gelu"], layer_norm_epsilon=numerics["layer_norm_epsilon"])
    return family


def timm_projection(index, path: str, config: dict) -> bool:
    """Whether a timm file's head is CLIP's image-text projection (an embedding), not a
    classifier: a CLIP architecture (``*_clip_*``) whose config names no labels and no
    fine-tuning (its pretrained tag without ``ft``: ``openai``, ``laion2b``, not
    ``laion2b_ft_in1k``), with a zero head bias (timm's conversion of CLIP's bias-free
    ``proj``; the bias is read, one small array)."""
    if "_clip_" not in timm_architecture_name(config) or "head.bias" not in index:
        return False
    pretrained = config.get("pretrained_cfg")
    pretrained = pretrained if isinstance(pretrained, dict) else {}
    architecture = config.get("architecture")
    tag = str(pretrained.get("tag") or (architecture.partition(".")[2]
                                        if isinstance(architecture, str) else ""))
    if config.get("label_names") or pretrained.get("label_names") or "ft" in tag.split("_"):
        return False
    return not np.any(read_safetensors_arrays(path, ["head.bias"])["head.bias"])


def _timm_classifier(index, path: str, config: dict, family: dict) -> str:
    """The pooling of a timm file: attention pooling (``attn_pool``), DeiT distilled
    (``dist_token``), else the config's ``global_pool``, else timm's default for the file
    (``"token"`` with a class token, average pooling without one or with ``fc_norm``)."""
    if "attn_pool.latent" in index:
        return "map"
    if "dist_token" in index:
        return "distilled"
    pool = config.get("global_pool", timm_model_args(config).get("global_pool"))
    if pool in ("token", "avg"):
        return "token" if pool == "token" else "gap"
    if pool is not None:
        raise CheckpointError(f"{path}: its config's global_pool {pool!r} is not one keras_vit "
                              "computes ('token', 'avg', 'map')")
    return "token" if "cls_token" in index and not family.get("fc_norm") else "gap"


def _timm_embed_prefix(tokens, prefix, image_size, stride, path, config) -> bool:
    """Whether the position embeddings have entries for the prefix tokens (timm's
    ``no_embed_class=False``), from their token count: the grid with or without them."""
    if image_size is not None:
        height, width = to_pair(image_size, "image_size")
        grid = (height // stride) * (width // stride)
        candidates = [embed for embed in (True, False)
                      if tokens == grid + (prefix if embed else 0)]
    else:
        candidates = [embed for embed in (True, False)
                      if math.isqrt(tokens - (prefix if embed else 0)) ** 2
                      == tokens - (prefix if embed else 0)]
    if len(candidates) == 1:
        return candidates[0]
    raise CheckpointError(f"{path}: cannot tell from its {tokens} position embeddings whether "
                          f"they include the {prefix} prefix token(s); pass config= (its timm "
                          "config.json, with model_args no_embed_class) or embed_prefix=")


def _timm_shape(index, path, key, rank):
    return _tensor_shape(index, key, path, rank, "not a timm VisionTransformer checkpoint")


def _timm_transformer(index, path, classifier, num_heads) -> Tuple[dict, dict, int]:
    """The Transformer's arguments (patch, widths, depth, heads, pooling, head, pre-logits),
    the bounds they must be within, and the input channels."""
    proj = _timm_shape(index, path, "patch_embed.proj.weight", 4)
    hidden, channels, patch = proj[0], proj[1], _square_patch(proj, "patch_embed.proj.weight",
                                                              path)
    if num_heads is None:
        if hidden not in _TIMM_HEADS:
            raise CheckpointError(f"{path}: width {hidden} is not one of timm's named ViTs "
                                  "and a timm file does not record the head count; pass "
                                  "num_heads")
        num_heads = _TIMM_HEADS[hidden]
    has_cls = "cls_token" in index
    depth = _count([int(m.group(1)) for m in map(_TIMM_FULL_BLOCK.match, index) if m], path,
                   "blocks", "'blocks.{i}.attn.qkv.weight'")
    _refuse_outside(index, _TIMM_BLOCK, depth, path,
                    "blocks (complete blocks have 'blocks.{i}.attn.qkv.weight')")
    mlp = _timm_shape(index, path, "blocks.0.mlp.fc1.weight", 2)[0]
    args = dict(patch_size=int(patch), hidden_size=int(hidden), mlp_size=int(mlp),
                num_heads=int(num_heads), num_layers=depth,
                classifier=classifier or ("token" if has_cls else "gap"))
    if "head.weight" in index:
        args["num_classes"] = int(_timm_shape(index, path, "head.weight", 2)[0])
    else:
        args["include_top"] = False
    if "pre_logits.fc.weight" in index:  # timm < 0.9's representation layer
        args["representation_size"] = int(_timm_shape(index, path, "pre_logits.fc.weight", 2)[0])
    bounds = {"width": max(hidden, args.get("representation_size", 0)),
              "MLP width": args["mlp_size"], "depth": depth, "patch size": patch,
              "channels": channels, "classes": args.get("num_classes", 1)}
    return args, bounds, channels


def _timm_resnet(index, path, args: dict, bounds: dict, channels: int) -> int:
    """A hybrid's ResNet arguments (and their bounds) added; the ResNet's stride (1 for a
    plain ViT, which takes the input channels instead)."""
    counts = _timm_units(index, path)
    if not counts:
        args["channels"] = int(channels)
        return 1
    args["resnet_stages"] = counts
    stem = _timm_shape(index, path, "patch_embed.backbone.stem.conv.weight", 4)
    args["resnet_width"] = stem[0] // 64
    bounds.update({"ResNet stages": len(counts), "ResNet units per stage": max(counts),
                   "ResNet width": args["resnet_width"]})
    return resnet_stride(counts)


def _timm_units(index, path) -> Tuple[int, ...]:
    """Units per stage of a timm hybrid's ResNet (empty for a plain ViT), counted from
    complete units; a key of any other unit or stage is refused."""
    units = {}
    for match in filter(None, map(_TIMM_FULL_UNIT.match, index)):
        units.setdefault(int(match.group(1)), []).append(int(match.group(2)))
    stages = _count(units, path, "stages", "'patch_embed.backbone.stages.{s}.blocks.0"
                                           ".conv1.weight'")
    counts = tuple(_count(units[s], path, f"units of stage {s}",
                          f"'patch_embed.backbone.stages.{s}.blocks.{{u}}.conv1.weight'")
                   for s in range(stages))
    for key in sorted(index):
        match = _TIMM_STAGE.match(key)
        if match and (int(match.group(1)) >= stages or match.group(2) is not None
                      and int(match.group(2)) >= counts[int(match.group(1))]):
            raise CheckpointError(f"{path}: key {key!r} is outside the file's {stages} stage(s) "
                                  f"of {counts} units (complete units have "
                                  "'patch_embed.backbone.stages.{s}.blocks.{u}.conv1.weight')")
    return counts


def _new_head_replaces_projection(args: dict, kwargs: dict) -> None:
    """``kwargs`` into a checkpoint's ``args``; a ``num_classes`` passed (a new classifier
    head) replaces a CLIP projection unless ``projection_dim`` is passed too."""
    if "num_classes" in kwargs and "projection_dim" not in kwargs:
        args.pop("projection_dim", None)
    args.update(kwargs)


def from_timm(path: str, classifier: Optional[str] = None, num_heads: Optional[int] = None,
              image_size=None, config: Optional[dict] = None, **kwargs) -> keras.Model:
    """A keras_vit model built for and loaded from a timm ViT ``.safetensors`` checkpoint,
    computing with timm's numerics (exact GELU; for hybrids GroupNorm epsilon 1e-5 and
    weight standardisation ``/ sqrt(var + 1e-8)``).

    Args:
        path: the ``.safetensors`` file, e.g. of ``vit_base_patch16_224.augreg2_in21k_ft_in1k``
            or ``vit_small_r26_s32_224``.
        classifier, num_heads, image_size, config: see :func:`timm_architecture`.
        **kwargs: other :func:`keras_vit.ViT` arguments (they override the checkpoint's).

    Returns:
        The loaded ``keras.Model``, taking [0, 255] pixels normalised with mean = std = 0.5
        (timm's AugReg and original weights) unless ``mean=`` / ``std=`` say otherwise;
        :func:`keras_vit.from_preset` reads them from the checkpoint's ``config.json``.
    """
    from keras_vit import models

    from keras_vit.checkpoints import load_timm

    chosen = {key: kwargs[key] for key in ("gelu", "layer_norm_epsilon") if key in kwargs}
    args = timm_architecture(path, classifier, num_heads, image_size, config, chosen)
    _new_head_replaces_projection(args, kwargs)
    model = models.ViT(**{"name": "vit", **NUMERICS[TIMM], **args})
    load_timm(model, path, numerics={key: args[key] for key in ("gelu", "layer_norm_epsilon")})
    return model


def transformers_architecture(directory: str, image_size=None) -> Tuple[dict, list]:
    """The :func:`keras_vit.ViT` arguments and the class names of a transformers model
    directory of the ViT family (:data:`keras_vit.sources.TRANSFORMERS_MODEL_TYPES`), from its
    ``config.json`` (width, depth, heads, MLP width, patch and image size, channels,
    LayerNorm epsilon, GELU variant, register tokens, ``id2label``), its ``model_type`` (the
    family's options: :func:`_transformers_family`) and the checkpoint's keys (its heads,
    or the pre-logits ``pooler`` of a ``ViTModel`` / ``DeiTModel``).

    Args:
        directory: the model directory (``config.json`` + ``model.safetensors``).
        image_size: int or (height, width); None: the config's.

    Returns:
        ``(arguments, class_names)``: keyword arguments for :func:`keras_vit.ViT` (without
        ``weights``) and the class names in class-index order (empty without a classifier).
    """
    config = read_transformers_config(directory)  # types and ranges checked
    weights = transformers_weights_file(directory)
    index = read_safetensors_index(weights)
    cfg_path = os.path.join(os.fspath(directory), "config.json")
    patch = to_pair(config.get("patch_size", 16), "patch_size")
    if patch[0] != patch[1]:
        raise CheckpointError(f"{cfg_path}: patch_size {patch} is not square")
    numerics = source_numerics(directory)
    hidden = config.get("hidden_size", 768)
    args = dict(patch_size=patch[0], hidden_size=hidden,
                mlp_size=config.get("intermediate_size", 3072) if "mlp_ratio" not in config
                else int(hidden * config["mlp_ratio"]),
                num_heads=config.get("num_attention_heads", 12),
                num_layers=config.get("num_hidden_layers", 12),
                channels=config.get("num_channels", 3), classifier="token",
                image_size=to_pair(config.get("image_size", 224), "image_size"),
                gelu=numerics["gelu"], layer_norm_epsilon=numerics["layer_norm_epsilon"])
    args.update(_transformers_family(config, index, cfg_path))
    _check_config_against_tensors(args, index, cfg_path, weights, config["model_type"])
    if image_size is not None:
        args["image_size"] = image_size
    return args, _transformers_head(args, config, index, directory, weights)


def _transformers_family(config: dict, index, cfg_path: str) -> dict:
    """The family's options of a transformers model type: DeiT's distillation token (and
    its second head), DINOv2's LayerScale, registers and ``token_gap`` classifier, CLIP's
    LayerNorm before the blocks and patch embedding without bias, SigLIP's MAP head."""
    kind = config["model_type"]
    if kind == "deit":
        return dict(distillation_token=True, classifier="distilled"
                    if "distillation_classifier.weight" in index else "token")
    if kind.startswith("dinov2"):
        if config.get("use_swiglu_ffn"):
            raise CheckpointError(f"{cfg_path}: use_swiglu_ffn (DINOv2 giant's SwiGLU MLP) is "
                                  "not a model keras_vit computes")
        registers = config.get("num_register_tokens", 0) if kind != "dinov2" else 0
        return dict(layer_scale=True, num_register_tokens=registers,
                    embed_prefix=not registers,
                    classifier="token_gap" if "classifier.weight" in index else "token")
    if kind.startswith("clip") or kind.startswith("siglip"):
        if "classifier.weight" in index:
            raise CheckpointError(f"{cfg_path}: a {kind} image classifier (*ForImageClassification"
                                  "'s head on the mean of the patch tokens) is not supported; "
                                  "the image towers and the full model are")
        if kind.startswith("clip"):
            return dict(pre_norm=True, patch_bias=False)
        if not config.get("vision_use_head", True):
            raise CheckpointError(f"{cfg_path}: vision_use_head false (a SigLIP tower without "
                                  "its attention-pooling head) is not supported")
        return dict(classifier="map", class_token=False)
    return {}


def _transformers_head(args: dict, config: dict, index, directory, weights) -> list:
    """The head's arguments (class count; CLIP: the projection's width) into ``args``, or
    ``include_top=False`` (with a ``ViTModel``'s pooler as pre-logits); the class names."""
    cfg_path = os.path.join(os.fspath(directory), "config.json")
    key = next((k for k in ("classifier.weight", "cls_classifier.weight",
                            "visual_projection.weight") if k in index), None)
    if key is None:
        args["include_top"] = False
        if "pooler.dense.weight" in index:
            check_pooler_act(config, directory, index)
            args["representation_size"] = int(
                _tensor_shape(index, "pooler.dense.weight", weights, 2, "")[0])
        return []
    count = int(_tensor_shape(index, key, weights, 2, "")[0])
    if key == "visual_projection.weight":  # an embedding, not classes
        args["projection_dim"] = count
        return []
    args["num_classes"] = count
    labels = config.get("id2label") or {}
    try:
        return [str(labels[str(i)]) if str(i) in labels else str(labels[i])
                for i in range(count)]
    except KeyError:
        raise CheckpointError(f"{cfg_path}: id2label does not name the {count} classes of "
                              "the classifier") from None


def _check_config_against_tensors(args, index, cfg_path, weights, model_type="vit") -> None:
    """The config's sizes against the tensor shapes (header only), before any model is
    built: a small file with a config claiming hidden_size=2048 must not allocate a
    2048-wide model (or a 10**9-wide one) before the mismatch is found."""
    layout = LAYOUTS[model_type]
    prefix = transformers_prefix(index, model_type)
    check_dtypes(index, weights)

    def shape(key, rank):
        return _tensor_shape(index, prefix + key, weights, rank,
                             f"not a transformers {model_type} checkpoint")

    proj_key = f"{layout.patch}.weight"
    mlp_key = f"{layout.layer}.0.{layout.block[6]}.weight"
    proj, mlp = shape(proj_key, 4), shape(mlp_key, 2)
    layer = re.escape(prefix + layout.layer)
    query = re.compile(rf"^{layer}\.(\d+)\.{re.escape(layout.block[1])}\.weight$")
    counted_by = f"'{prefix}{layout.layer}.{{i}}.{layout.block[1]}.weight'"
    layers = _count([int(m.group(1)) for m in map(query.match, index) if m], weights,
                    "layers", counted_by)
    embedded = {"deit": 2, "siglip": 0, "siglip_vision_model": 0}.get(model_type, 1)
    rank = 2 if layout.position.endswith(".weight") else 3
    found = shape(layout.position, rank)
    tokens = _check_position_embedding(found if rank == 3 else (1,) + found,
                                       prefix + layout.position, weights, proj[0], embedded)
    grid = [size // args["patch_size"] for size in args["image_size"]]
    checks = [  # (field, config value, what the file has, agrees)
        ("hidden_size", args["hidden_size"], f"{prefix + proj_key!r} has shape {proj}",
         proj[0] == args["hidden_size"]),
        ("num_channels", args["channels"], f"{prefix + proj_key!r} has shape {proj}",
         proj[1] == args["channels"]),
        ("patch_size", args["patch_size"], f"{prefix + proj_key!r} has shape {proj}",
         proj[2:] == (args["patch_size"],) * 2),
        ("intermediate_size", args["mlp_size"], f"{prefix + mlp_key!r} has shape {mlp}",
         mlp[0] == args["mlp_size"]),
        ("num_hidden_layers", args["num_layers"], f"{layers} layers (counted by {counted_by})",
         layers == args["num_layers"]),
        ("image_size", args["image_size"][0] if args["image_size"][0] == args["image_size"][1]
         else args["image_size"], f"{prefix}{layout.position} has {tokens} tokens "
         f"({embedded} + the patch grid)", grid[0] * grid[1] + embedded == tokens),
    ]
    for field, value, what, agrees in checks:
        if not agrees:
            raise CheckpointError(f"{cfg_path}: {field} {value} does not match {weights}: "
                                  f"{what}")
    layer_key = re.compile(rf"^{layer}\.(\d+)\.")
    _refuse_outside(index, layer_key, layers, weights, f"layers (counted by {counted_by})")
    check_bounds(weights, {"width": args["hidden_size"], "MLP width": args["mlp_size"],
                           "depth": layers, "patch size": args["patch_size"],
                           "channels": args["channels"]})
    _check_holds_blocks(index, layer_key, args, weights)
    if args["hidden_size"] % args["num_heads"]:
        raise CheckpointError(f"{cfg_path}: num_attention_heads {args['num_heads']} does not "
                              f"divide hidden_size {args['hidden_size']}")


def from_transformers(directory: str, image_size=None, **kwargs) -> keras.Model:
    """A keras_vit model built from a transformers model directory's ``config.json``
    and loaded from its ``model.safetensors``, e.g. a download of ``google/vit-base-patch16-224``
    (``ViTForImageClassification``; a ``ViTModel`` gives a model without head).

    The family's model types load too (``model_type``; a headless model's output is its
    pooled features):

    ==========================  ==============================================================
    ``vit``                     ``ViTForImageClassification``, ``ViTModel``
    ``deit``                    ``DeiTForImageClassification`` (the class token's head; the
                                distillation token is in the sequence),
                                ``DeiTForImageClassificationWithTeacher`` (two heads,
                                averaged), ``DeiTModel``
    ``dinov2``,                 ``Dinov2Model`` (the class token), ``Dinov2ForImageClassification``
    ``dinov2_with_registers``   (``classifier="token_gap"``); LayerScale, registers
    ``clip_vision_model``,      ``CLIPVisionModel`` (``pooler_output``: the class token after
    ``clip``                    ``post_layernorm``), ``CLIPVisionModelWithProjection`` and a
                                ``CLIPModel``'s image tower: ``visual_projection`` is the last
                                layer ``projection`` (``projection_dim``, no bias, no head),
                                the output the image embedding of the joint space
    ``siglip_vision_model``,    ``SiglipVisionModel`` and a ``SiglipModel``'s image tower: the
    ``siglip``                  attention-pooling head's output (``pooler_output``)
    ==========================  ==============================================================

    The model computes what transformers computes: the config's ``hidden_act`` (exact GELU
    for ``"gelu"``, QuickGELU, tanh GELU) and LayerNorm epsilon (each model type's default
    where the config has none: ViT and DeiT 1e-12, DINOv2 and SigLIP 1e-6, CLIP 1e-5), at the
    config's image size or the ``image_size`` it is built for (the family's position
    embeddings are then resized when loading as transformers' ``interpolate_pos_encoding``
    does: PyTorch's bicubic, antialiased for DINOv2 with registers).
    Its class names (from ``id2label``)
    are set as ``model.class_names`` (saved with the model in ``.keras`` files;
    :func:`export.export_saved_model` serves them as labels).

    Args:
        directory: the model directory.
        image_size: int or (height, width); None: the config's (position embeddings are
            resized for another size).
        **kwargs: other :func:`keras_vit.ViT` arguments (they override the config's).

    Returns:
        The loaded ``keras.Model``.
    """
    from keras_vit import models

    args, names = transformers_architecture(directory, image_size)
    _new_head_replaces_projection(args, kwargs)
    model = models.ViT(weights=directory, **{"name": "vit", **args})
    model.class_names = names if args.get("include_top", True) else []
    return model
