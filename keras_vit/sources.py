"""Where weights come from (the original release, timm, transformers) and the numerics each
source computes with, so that a model loaded from a source computes what the source does.

=======================  ==========  ==============  ===============  ==========================
source                   GELU        LayerNorm eps   GroupNorm eps    weight standardisation
=======================  ==========  ==============  ===============  ==========================
original (jax / Flax)    tanh        1e-6            1e-6             ``(w - m) / (std + 1e-5)``
timm                     erf (exact) 1e-6            1e-5             ``(w - m) / sqrt(var+1e-8)``
transformers             erf (exact) 1e-12           (no hybrids)     (no hybrids)
=======================  ==========  ==============  ===============  ==========================

Read from the sources: jax's ``nn.gelu`` defaults to the tanh approximation; PyTorch's
``nn.GELU`` (timm) and transformers' ``"gelu"`` activation are exact; timm's ViTs use
``LayerNorm(eps=1e-6)``; transformers' ``ViTConfig.layer_norm_eps`` defaults to 1e-12 (the
value is read from each ``config.json``); timm's ``vision_transformer_hybrid._resnetv2``
uses ``StdConv2dSame(eps=1e-8)`` (epsilon added to the variance) and ``GroupNormAct``'s
default epsilon 1e-5.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

from keras_vit import weights_kind as kinds
from keras_vit.errors import CheckpointError

ORIGINAL, TIMM, TRANSFORMERS = "original", "timm", "transformers"

NUMERICS = {
    ORIGINAL: dict(gelu="tanh", layer_norm_epsilon=1e-6, group_norm_epsilon=1e-6,
                   std_conv_epsilon=1e-5, std_conv_epsilon_in_sqrt=False),
    TIMM: dict(gelu="erf", layer_norm_epsilon=1e-6, group_norm_epsilon=1e-5,
               std_conv_epsilon=1e-8, std_conv_epsilon_in_sqrt=True),
    TRANSFORMERS: dict(gelu="erf", layer_norm_epsilon=1e-12, group_norm_epsilon=1e-6,
                       std_conv_epsilon=1e-5, std_conv_epsilon_in_sqrt=False),
}

# transformers' ``hidden_act`` names -> keras_vit's GELU variants.
_TRANSFORMERS_GELU = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh",
                      "gelu_pytorch_tanh": "tanh", "quick_gelu": "quick"}
# The transformers model types keras_vit loads (image towers: the vision config of a "clip"
# or "siglip" directory) and the defaults of the fields it reads, where a config.json leaves
# them out (transformers' configuration_*.py).
_VIT_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                     num_hidden_layers=12, num_channels=3, image_size=224, patch_size=16,
                     hidden_act="gelu", layer_norm_eps=1e-12)
_DINO_DEFAULTS = dict(_VIT_DEFAULTS, layer_norm_eps=1e-6, mlp_ratio=4, use_swiglu_ffn=False)
TRANSFORMERS_DEFAULTS = {
    "vit": {}, "deit": _VIT_DEFAULTS,
    "dinov2": dict(_DINO_DEFAULTS, patch_size=14, num_register_tokens=0),
    "dinov2_with_registers": dict(_DINO_DEFAULTS, num_register_tokens=4),
    "clip_vision_model": dict(_VIT_DEFAULTS, patch_size=32, hidden_act="quick_gelu",
                              layer_norm_eps=1e-5),
    "siglip_vision_model": dict(_VIT_DEFAULTS, hidden_act="gelu_pytorch_tanh",
                                layer_norm_eps=1e-6, vision_use_head=True),
}
# Full two-tower directories: their image tower's model type.
_TOWERS = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}
TRANSFORMERS_MODEL_TYPES = tuple(sorted(set(TRANSFORMERS_DEFAULTS) | set(_TOWERS)))
PICKLED_SUFFIXES = kinds.PICKLED_SUFFIXES


def refuse_pickle(path: str) -> None:
    """Raises for a pickled PyTorch checkpoint: unpickling can run arbitrary code."""
    raise CheckpointError(
        f"{path}: pickled PyTorch checkpoints (.bin, .pth, .pt) are refused (unpickling can "
        "run code); use the model's .safetensors file instead (timm: the .safetensors file; "
        "transformers: the directory with config.json and model.safetensors)")


def weights_source(weights) -> Optional[str]:
    """``"timm"`` for a ``.safetensors`` file or a directory in timm's hub layout,
    ``"transformers"`` for another model directory, ``"original"`` for an ``.npz`` file, None
    for anything else (``.keras``, names, ``hf://`` handles); see
    :func:`keras_vit.weights_kind.weights_kind`."""
    return _SOURCES.get(kinds.weights_kind(weights))


_SOURCES = {kinds.TIMM_FILE: TIMM, kinds.TIMM_DIR: TIMM, kinds.TRANSFORMERS: TRANSFORMERS,
            kinds.NPZ: ORIGINAL}


MAX_JSON_BYTES = 64 << 20  # a config.json with ImageNet-21k's id2label is about 1 MB


def parse_json(text, source: str, error=ValueError):
    """``json.loads`` whose every failure is ``error`` with one line naming ``source``: not
    JSON, not UTF-8, or nested deeper than Python's parser can follow (100,000 ``[`` are a
    RecursionError in ``json.loads``)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise error(f"{source}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError as found:
        raise error(f"{source}: not valid JSON (not UTF-8 text: {found.reason})") from None
    except ValueError as found:
        raise error(f"{source}: not valid JSON ({found})") from None


def read_json(path, error=ValueError):
    """The JSON document in file ``path``, or ``error`` with a one-line message naming the
    file: unreadable, over :data:`MAX_JSON_BYTES`, or not JSON (:func:`parse_json`)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as found:
        raise error(f"{path}: cannot read it ({found.strerror or found})") from None
    if len(data) > MAX_JSON_BYTES:
        raise error(f"{path} is not a JSON file keras_vit reads: over {MAX_JSON_BYTES:,} "
                    "bytes")
    return parse_json(data, path, error)


def read_transformers_config(directory) -> dict:
    """The image model's config of a transformers model directory, checked: its
    ``config.json`` (a ``"clip"`` or ``"siglip"`` directory's ``vision_config``, with the
    directory's ``model_type``), the fields keras_vit reads filled
    with the model type's defaults (:data:`TRANSFORMERS_DEFAULTS`) where left out.

    Raises:
        CheckpointError: no or unreadable ``config.json``, or a ``model_type`` that is not
            one of :data:`TRANSFORMERS_MODEL_TYPES`.
    """
    directory = os.fspath(directory)
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} is not a transformers model directory: it has no "
                              "config.json")
    config = read_json(path, CheckpointError)
    found = config.get("model_type") if isinstance(config, dict) else type(config).__name__
    if not isinstance(found, str) or found not in TRANSFORMERS_MODEL_TYPES:
        raise CheckpointError(f"{path}: model_type {found!r} is not a transformers ViT "
                              f"keras_vit loads (supported: "
                              f"{', '.join(TRANSFORMERS_MODEL_TYPES)})")
    vision = config.get("vision_config", {}) if found in _TOWERS else config
    if not isinstance(vision, dict):
        raise CheckpointError(f"{path}: vision_config is not a JSON object")
    vision = dict(TRANSFORMERS_DEFAULTS[_TOWERS.get(found, found)], **vision)
    vision["model_type"] = found
    _check_config_fields(vision, path)
    return vision


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _config_problem(field: str, value) -> Optional[str]:
    """Why ``value`` cannot be the config's ``field``, or None."""
    if field in ("image_size", "patch_size"):
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        if not (_positive_int(value) or pair and all(map(_positive_int, value))):
            return "is not a positive integer or a pair of them"
    elif field == "layer_norm_eps":
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            return "is not a positive finite number"
    elif field == "hidden_act":
        if not isinstance(value, str) or value not in _TRANSFORMERS_GELU:
            return (f"is not a GELU keras_vit computes (known: "
                    f"{', '.join(sorted(_TRANSFORMERS_GELU))})")
    elif field == "pooler_act":
        if not isinstance(value, str):
            return "is not an activation name"
    elif field == "mlp_ratio":
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            return "is not a positive finite number"
    elif field == "num_register_tokens":
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return "is not a non-negative integer"
    elif not _positive_int(value):
        return "is not a positive integer"
    return None


_CONFIG_FIELDS = ("hidden_size", "intermediate_size", "num_attention_heads",
                  "num_hidden_layers", "num_channels", "image_size", "patch_size",
                  "layer_norm_eps", "hidden_act", "pooler_act", "mlp_ratio",
                  "num_register_tokens")


def _check_config_fields(config: dict, path: str) -> None:
    """The fields keras_vit reads, where present: types and ranges (a config.json is data
    from the hub, not code: ``"abc"``, null, 32.7 or a negative epsilon are refused)."""
    for field in _CONFIG_FIELDS:
        if field in config:
            problem = _config_problem(field, config[field])
            if problem:
                raise CheckpointError(f"{path}: {field} {config[field]!r} {problem}")


def check_pooler_act(config: dict, directory, index) -> None:
    """A ``ViTModel``'s pooler (keras_vit's ``pre_logits``, tanh) with another activation
    cannot be computed: refused when the checkpoint has a pooler."""
    act = config.get("pooler_act", "tanh")
    if act != "tanh" and any(key.startswith("pooler.") for key in index):
        path = os.path.join(os.fspath(directory), "config.json")
        raise CheckpointError(f"{path}: pooler_act {act!r} is not supported (keras_vit's "
                              "pre-logits layer is tanh, as transformers' default)")


def source_numerics(weights) -> dict:
    """The numerics (:data:`NUMERICS` keys) of the source of ``weights``; the original's for
    anything that is not a timm or transformers checkpoint. For a transformers directory
    the GELU and LayerNorm epsilon come from its ``config.json``; a ``hf://`` handle is
    that of the repository it names (from the hub's cache, downloaded there if missing)."""
    if kinds.weights_kind(weights) == kinds.HUB:
        weights = kinds.download(os.fspath(weights))
    source = weights_source(weights)
    if source == TRANSFORMERS:
        config = read_transformers_config(weights)
        return dict(NUMERICS[TRANSFORMERS],
                    gelu=_TRANSFORMERS_GELU[config.get("hidden_act", "gelu")],
                    layer_norm_epsilon=float(config.get("layer_norm_eps", 1e-12)))
    return dict(NUMERICS[source if source == TIMM else ORIGINAL])
