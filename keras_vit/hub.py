"""Weights by name: :func:`from_preset` builds the model a Hugging Face hub repository (or a
local directory in the hub's layout) holds, with the checkpoint's own preprocessing and
label names.

A handle is ``hf://ORG/NAME`` or ``hf://ORG/NAME@REVISION`` (keras-hub's convention),
downloaded with ``huggingface_hub`` (its cache, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and login
apply; only ``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` are
fetched). A local directory is what timm's ``save_for_hf`` / ``push_to_hf_hub`` or
transformers' ``save_pretrained`` write.

What is read from the repository:

==================  =======================================  ===============================
                    timm (``config.json`` with               transformers (``config.json``
                    ``"architecture"``)                      with ``"model_type"``)
==================  =======================================  ===============================
architecture        tensor shapes (:func:`keras_vit.from_    ``config.json`` (its ``model_type``:
                    timm`), heads from ``model_args`` or     ViT, DeiT, DINOv2, CLIP, SigLIP;
                    timm's head count for the width          :func:`keras_vit.from_transformers`)
classes, labels     ``num_classes``, ``label_names``         ``id2label``
image size          ``pretrained_cfg.input_size``            ``image_size``
mean, std           ``pretrained_cfg.mean`` / ``.std``       ``preprocessor_config.json``
                                                             (``image_mean`` / ``image_std``,
                                                             ``rescale_factor``)
interpolation       ``pretrained_cfg.interpolation``         ``preprocessor_config.json``
                                                             ``resample``
==================  =======================================  ===============================

The model's first layer normalises [0, 255] pixels with the checkpoint's mean / std, and
the serving export and ``keras-vit predict`` resize with its interpolation
(:func:`keras_vit.preprocessing.model_preprocessing`); the label names are the model's
``class_names`` (saved in ``.keras`` files, served as labels). A config that is missing a
value or contradicts the weights is a one-line :class:`keras_vit.CheckpointError` naming
the argument to pass.
"""
from __future__ import annotations

import os
from typing import Optional

import keras

from keras_vit import weights_kind as kinds
from keras_vit.errors import CheckpointError
from keras_vit.models import has_head
from keras_vit.preprocessing import INTERPOLATIONS
from keras_vit.sources import read_json

# timm's head count for a ViT width (timm's vision_transformer.py; a config's
# model_args.num_heads wins).
TIMM_HEADS = {192: 3, 256: 4, 384: 6, 512: 8, 640: 10, 768: 12, 896: 14, 1024: 16,
              1152: 16, 1280: 16, 1408: 16}
# timm architecture name prefixes keras_vit builds with from_timm (plain ViTs, hybrids and
# the family: DeiT, DeiT III; CLIP, DINOv2 and SigLIP towers are vit_* in timm).
TIMM_ARCHITECTURES = ("vit_", "deit_", "deit3_")
# Resize methods by their names in timm (strings) and transformers (PIL's numbers).
_INTERPOLATION_NAMES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest",
                        "lanczos": "lanczos3", "box": "area", "area": "area"}
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos3", 2: "bilinear", 3: "bicubic", 4: "area"}


def preset_directory(handle) -> str:
    """The local directory of a handle or a directory (checked)."""
    path = os.fspath(handle)
    kind = kinds.weights_kind(path)
    if kind == kinds.HUB:
        path = kinds.download(path)
    elif kind not in (kinds.TIMM_DIR, kinds.TRANSFORMERS):
        raise ValueError(f"{path!r} is not a preset: expected hf://ORG/NAME[@REVISION] or a "
                         "local model directory in the hub's layout (config.json and "
                         "model.safetensors)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"{path} has no config.json: not a model directory in the hub's "
                              "layout (timm's save_for_hf and transformers' save_pretrained "
                              "write one); for a bare timm file use keras_vit.from_timm")
    return path


def from_preset(handle, *, image_size=None, num_heads: Optional[int] = None, mean=None,
                std=None, interpolation: Optional[str] = None, **kwargs) -> keras.Model:
    """The keras_vit model of a timm or transformers checkpoint, by name.

    Args:
        handle: ``"hf://ORG/NAME"``, ``"hf://ORG/NAME@REVISION"`` or a local directory in
            the hub's layout (see the module docstring).
        image_size: int or (height, width); None: the checkpoint's.
        num_heads: attention heads of a timm checkpoint whose config and width do not say.
        mean, std, interpolation: the input statistics (per channel, [0, 1] scale) and resize
            method; None: the checkpoint's (required when its config has none).
        **kwargs: other :func:`keras_vit.ViT` arguments (``include_top``, ``dtype``, ...).

    Returns:
        The loaded model, taking [0, 255] pixels; ``class_names`` set when the config names
        the classes.

    Example:
    >>> model = keras_vit.from_preset("hf://google/vit-base-patch16-224")  # doctest: +SKIP
    """
    directory = preset_directory(handle)
    chosen = dict(image_size=image_size, mean=mean, std=std, interpolation=interpolation)
    if kinds.directory_kind(directory) == kinds.TIMM_DIR:
        return _timm_preset(directory, chosen, num_heads, kwargs)
    return _transformers_preset(directory, chosen, kwargs)


def _choose(found: dict, chosen: dict) -> dict:
    """The checkpoint's values with the caller's (not None) instead."""
    return {key: chosen[key] if chosen.get(key) is not None else found.get(key)
            for key in set(found) | set(chosen)}


def interpolation_name(value, source: str) -> str:
    """A checkpoint's resize method (timm's name, PIL's number) as :data:`INTERPOLATIONS`."""
    if isinstance(value, int) and not isinstance(value, bool) and value in _PIL_RESAMPLE:
        return _PIL_RESAMPLE[value]
    if isinstance(value, str) and value in _INTERPOLATION_NAMES:
        return _INTERPOLATION_NAMES[value]
    raise CheckpointError(f"{source}: interpolation {value!r} has no equivalent in "
                          f"tf.image.resize; pass interpolation= (one of "
                          f"{', '.join(INTERPOLATIONS)})")


def _require_statistics(values: dict, source: str) -> None:
    missing = [key for key in ("mean", "std") if values.get(key) is None]
    if missing:
        raise CheckpointError(f"{source} does not say the checkpoint's input "
                              f"{' and '.join(missing)}; pass "
                              f"{', '.join(k + '=' for k in missing)} to from_preset "
                              "(per channel, [0, 1] scale, e.g. mean=(0.485, 0.456, 0.406), "
                              "std=(0.229, 0.224, 0.225))")


# ---- timm: config.json {"architecture", "num_classes", "pretrained_cfg", ...} ----

def timm_config(directory: str) -> dict:
    """A timm hub ``config.json`` as ``{"architecture", "model_args", "pretrained_cfg"}``,
    with top-level ``num_classes`` / ``label_names`` moved into ``pretrained_cfg`` (timm's
    own reading; the older single-dict layout is accepted too)."""
    path = os.path.join(directory, "config.json")
    config = read_json(path, CheckpointError)
    pretrained = config.get("pretrained_cfg", config)
    if not isinstance(pretrained, dict):
        raise CheckpointError(f"{path}: pretrained_cfg is not a JSON object")
    pretrained = dict(pretrained)
    for key in ("num_classes", "label_names"):
        if key in config:
            pretrained[key] = config[key]
    if "labels" in pretrained and "label_names" not in pretrained:
        pretrained["label_names"] = pretrained["labels"]
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CheckpointError(f"{path}: model_args is not a JSON object")
    return dict(architecture=config.get("architecture"), model_args=model_args,
                pretrained_cfg=pretrained, global_pool=config.get("global_pool"))


def timm_preprocessing(pretrained: dict, source: str) -> dict:
    """``{"mean", "std", "interpolation", "image_size"}`` of a timm ``pretrained_cfg``
    (None where it says nothing)."""
    size = pretrained.get("input_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 3):
        raise CheckpointError(f"{source}: pretrained_cfg.input_size {size!r} is not "
                              "[channels, height, width]; pass image_size=")
    interpolation = pretrained.get("interpolation")
    return dict(mean=pretrained.get("mean"), std=pretrained.get("std"),
                interpolation=None if interpolation is None
                else interpolation_name(interpolation, source),
                image_size=tuple(size[1:]) if size else None)


def timm_heads(weights: str, model_args: dict, source: str) -> Optional[int]:
    """``model_args.num_heads``, else timm's count for the file's width (None: unknown)."""
    if model_args.get("num_heads") is not None:
        return model_args["num_heads"]
    from keras_vit.checkpoints import read_safetensors_index
    proj = read_safetensors_index(weights).get("patch_embed.proj.weight")
    return TIMM_HEADS.get(int(proj.shape[0])) if proj is not None else None


def _timm_preset(directory: str, chosen: dict, num_heads, kwargs) -> keras.Model:
    from keras_vit.checkpoint_architecture import from_timm
    from keras_vit.checkpoints import transformers_weights_file
    source = os.path.join(directory, "config.json")
    config = timm_config(directory)
    architecture = config["architecture"]
    if not isinstance(architecture, str) or not architecture.startswith(TIMM_ARCHITECTURES):
        raise CheckpointError(f"{source}: architecture {architecture!r} is not one keras_vit "
                              f"builds from a timm checkpoint ({', '.join(TIMM_ARCHITECTURES)}"
                              "...)")
    pretrained = config["pretrained_cfg"]
    values = _choose(timm_preprocessing(pretrained, source), chosen)
    if kwargs.get("include_preprocessing", True):
        _require_statistics(values, f"{source} (pretrained_cfg)")
    weights = transformers_weights_file(directory)
    if num_heads is None:
        num_heads = timm_heads(weights, config["model_args"], source)
    # The family's options (pooling, GELU variant, epsilons) from the tensors and the config.
    model = from_timm(weights, classifier=kwargs.pop("classifier", None), num_heads=num_heads,
                      config=read_json(source, CheckpointError), **values, **kwargs)
    _name_classes(model, pretrained, weights, source)
    return model


def _name_classes(model: keras.Model, pretrained: dict, weights: str, source: str) -> None:
    """``model.class_names`` from a timm config's ``label_names`` (a list, or a dict
    ``{index: name}``) when the model kept the checkpoint's head; the config's
    ``num_classes`` and labels must be those of the weights' head."""
    from keras_vit.checkpoints import read_safetensors_index
    head = read_safetensors_index(weights).get("head.weight")
    classes = int(head.shape[0]) if head is not None else 0
    count = pretrained.get("num_classes")
    if count is not None and count != classes:
        raise CheckpointError(f"{source}: num_classes {count!r} does not match the weights' "
                              f"head of {classes} classes (weights: {weights})")
    names = pretrained.get("label_names")
    if not names or not classes:
        return
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i)) for i in range(classes)]
    if not isinstance(names, list) or len(names) != classes or None in names:
        raise CheckpointError(f"{source}: label_names does not name the {classes} classes of "
                              "the head; fix or remove it")
    if has_head(model) and model.output_shape[-1] == classes:
        model.class_names = [str(name) for name in names]


# ---- transformers: config.json {"model_type", "id2label", ...} + preprocessor_config.json ----

def transformers_preprocessing(directory: str) -> dict:
    """``{"mean", "std", "interpolation"}`` of a transformers ``preprocessor_config.json``
    on keras_vit's scale (``(pixels / 255 - mean) / std``); {} without one."""
    path = os.path.join(directory, "preprocessor_config.json")
    if not os.path.isfile(path):
        return {}
    config = read_json(path, CheckpointError)
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    scale = config.get("rescale_factor", 1 / 255) if config.get("do_rescale", True) else 1.0
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale <= 0:
        raise CheckpointError(f"{path}: rescale_factor {scale!r} is not a positive number; "
                              "pass mean= and std=")
    mean, std = config.get("image_mean"), config.get("image_std")
    if not config.get("do_normalize", True):
        mean, std = 0.0, 1.0
    found = dict(interpolation=interpolation_name(config.get("resample", 2), path))
    if mean is not None and std is not None:
        try:  # keras_vit's [0, 1] scale: (x * scale - m) / s = (x / 255 - m') / s'
            factor = 255.0 * scale
            found["mean"] = [float(m) / factor for m in (mean if isinstance(mean, list)
                                                          else [mean])]
            found["std"] = [float(s) / factor for s in (std if isinstance(std, list)
                                                         else [std])]
        except (TypeError, ValueError):
            raise CheckpointError(f"{path}: image_mean / image_std are not numbers; pass mean= "
                                  "and std=") from None
    return found


def _transformers_preset(directory: str, chosen: dict, kwargs) -> keras.Model:
    from keras_vit.checkpoint_architecture import from_transformers
    values = _choose(transformers_preprocessing(directory), chosen)
    if kwargs.get("include_preprocessing", True):
        _require_statistics(values, os.path.join(directory, "preprocessor_config.json"))
    image_size = values.pop("image_size", None)
    for key in ("mean", "std"):  # one value for every channel
        if isinstance(values[key], list) and len(values[key]) == 1:
            values[key] = values[key][0]
    model = from_transformers(directory, image_size=image_size, **values, **kwargs)
    if len(model.class_names) != model.output_shape[-1]:  # a new head (num_classes=)
        model.class_names = []
    return model
