"""The loaders (:func:`load_pretrained`, :func:`load_timm`, :func:`load_transformers`): plan
from the headers, read the arrays that load, check them, then assign (nothing before every
check passed); and the warning when the model computes otherwise than the source."""
from __future__ import annotations

import logging
import os
from typing import Dict, List, Tuple

import keras
import numpy as np

from keras_vit.checkpoints.checks import check_dtypes, check_finite
from keras_vit.checkpoints.key_map import KeyMap, _shape, walk
from keras_vit.checkpoints.original_keys import ORIGINAL, POS_EMBEDDING_KEY
from keras_vit.checkpoints.plan import _plan, _Plan, checkpoint_position_prefix
from keras_vit.checkpoints.readers import (read_npz_arrays, read_npz_index,
                                           read_safetensors_arrays, read_safetensors_index)
from keras_vit.checkpoints.timm_keys import TIMM, timm_config_numerics
from keras_vit.checkpoints.transformers_keys import (transformers_key_map,
                                                     transformers_weights_file)
from keras_vit.errors import CheckpointError, CheckpointMismatchError
from keras_vit.position_embeddings import resize_position_embeddings
from keras_vit.sources import (NUMERICS, ORIGINAL as ORIGINAL_SOURCE, check_pooler_act,
                               read_transformers_config, source_numerics)

logger = logging.getLogger("keras_vit")


def _fit_position_embeddings(value, encoder, has_cls, report, key=POS_EMBEDDING_KEY,
                             method="bilinear"):
    """Drops the class token's embedding if the model has none, then resizes the grid
    (``method``: the source's, :data:`keras_vit.position_embeddings.RESIZE_METHODS`)."""
    prefix = checkpoint_position_prefix(encoder, has_cls)
    if prefix and not encoder.position_prefix_tokens:
        value, prefix = value[:, 1:], 0
    side = int(np.sqrt(value.shape[1] - prefix))
    if (side, side) != tuple(encoder.grid_size):
        report["resized"].append(f"{key} grid {(side, side)} -> "
                                 f"{tuple(encoder.grid_size)}"
                                 + (f" ({method})" if method != "bilinear" else ""))
        value = resize_position_embeddings(value, encoder.grid_size, prefix,
                                           old_grid=(side, side), method=method)
    return value


def _values(plan: _Plan, arrays, encoder, has_cls, path, method="bilinear"):
    """(variable, value in the variable's dtype) for every entry to load; nothing is
    assigned here. Every array is checked finite *after* the cast to the variable's dtype
    (a finite float64 1e300 is infinite as float32)."""
    updates, cast_arrays = [], []
    for entry in plan.load:
        dtype = np.dtype(keras.backend.standardize_dtype(entry.variable.dtype))
        with np.errstate(over="ignore"):
            cast = [np.asarray(arrays[k], dtype) for k in entry.keys]
        cast_arrays += zip(entry.keys, cast)
        value = entry.combine(cast)
        if entry.kind == "posemb":
            value = _fit_position_embeddings(value, encoder, has_cls, plan.report,
                                             entry.keys[0], method)
        updates.append((entry.variable,
                        np.asarray(value, dtype).reshape(_shape(entry.variable))))
        plan.report["loaded"].extend(entry.keys)
    check_finite(path, cast_arrays, detail=" (as the model's floats)")
    return updates


def _log(plan: _Plan, model: keras.Model) -> None:
    report = plan.report
    if plan.head_dropped:
        logger.warning("keras_vit: the checkpoint's head is not loaded: model %r has no head "
                       "(include_top=False)", model.name)
    others = [k for k in report["dropped"] if k not in plan.head_keys]
    if others:
        logger.warning("keras_vit: not loaded (no place in this model, as when fine-tuning): "
                       "%s", ", ".join(others))
    if report["reinitialized"]:
        logger.warning("keras_vit: %s; the head is zero-initialised for fine-tuning",
                       plan.head_reset_because)
    if report["resized"]:
        logger.warning("keras_vit: position embeddings resized: %s", "; ".join(report["resized"]))


def load_pretrained(model: keras.Model, path, *, verbose: bool = True) -> Dict[str, list]:
    """Loads an original ViT ``.npz`` checkpoint into a built keras_vit model.

    Follows the paper's transfer recipe. ``pre_logits`` is dropped when the model has no
    representation layer, and then the checkpoint's head (trained on the pre-logits
    features) is not kept either. A head of another shape (class count) is not loaded. In
    both cases the model's head is set to zeros (a fresh zero-initialised D x K layer, paper
    section 3.1); so is it when the checkpoint has no head key at all (a feature extractor's,
    e.g. timm's ``num_classes=0`` or transformers' ``ViTModel``). A model without a head
    (``include_top=False``) ignores the checkpoint's head. Position embeddings are resized to
    the model's grid with aligned-corners bilinear interpolation (section 3.2). GroupNorm
    parameters stored as (1, 1, 1, C) are squeezed. Each of these is logged (logger
    ``"keras_vit"``).

    Names and shapes are checked from the archive's headers first; only the arrays that load
    are read. Anything else that does not fit raises :class:`CheckpointMismatchError`
    listing every offending key; arrays that are not floating-point, or hold NaN or
    infinite values once cast to the model's dtype, raise :class:`CheckpointError` naming
    them. On any error no weight of the model has been changed.

    Args:
        model: a keras_vit model (built by :func:`keras_vit.ViT` or a named builder).
        path: the ``.npz`` file (a path or path-like).
        verbose: log what was dropped, re-initialised or resized.

    Returns:
        A report ``{"loaded": [...], "dropped": [...], "reinitialized": [...],
        "resized": [...]}`` of original keys.
    """
    path = os.fspath(path)
    index = read_npz_index(path)
    return _load(model, path, index, lambda keys: read_npz_arrays(path, keys), ORIGINAL,
                 verbose)


def _unit_numerics(layer) -> List[Tuple[str, object]]:
    convs = [layer.conv1, layer.conv2, layer.conv3]
    gns = [layer.gn1, layer.gn2, layer.gn3]
    if layer.use_projection:
        convs.append(layer.conv_proj)
        gns.append(layer.gn_proj)
    return ([("std_conv_epsilon", conv.epsilon) for conv in convs]
            + [("std_conv_epsilon_in_sqrt", conv.epsilon_in_sqrt) for conv in convs]
            + [("group_norm_epsilon", gn.epsilon) for gn in gns])


def _model_numerics(model: keras.Model) -> Dict[str, set]:
    """The values of each :data:`keras_vit.sources.NUMERICS` option in the model's layers
    (the ResNet options only in hybrids)."""
    found: Dict[str, set] = {option: set() for option in NUMERICS[ORIGINAL_SOURCE]}
    for option, value in walk(model, {
            "block": lambda layer: [("gelu", layer.gelu),
                                    ("layer_norm_epsilon", layer.layer_norm_epsilon)],
            "unit": _unit_numerics,
            "conv_root": lambda layer: [("std_conv_epsilon", layer.epsilon),
                                        ("std_conv_epsilon_in_sqrt", layer.epsilon_in_sqrt)],
            "gn_root": lambda layer: [("group_norm_epsilon", layer.epsilon)]}):
        found[option].add(value)
    return found


def _warn_other_numerics(model: keras.Model, numerics: dict, source: str) -> None:
    """Logs where the model's layers compute otherwise than the checkpoint's source: GELU
    and LayerNorm epsilon of the blocks; GroupNorm and weight-standardisation epsilons of a
    hybrid's ResNet."""
    for option, values in _model_numerics(model).items():
        found = sorted(values - {numerics[option]})
        if found:
            logger.warning("keras_vit: %s computes with %s=%r, this model has %s=%r: its "
                           "outputs will differ from %s's (build it with weights=, or pass "
                           "%s=%r)", source, option, numerics[option], option, found[0],
                           source, option, numerics[option])


def _load(model, path, index, read_arrays, key_map: KeyMap, verbose: bool) -> Dict[str, list]:
    """The checks and transfer rules shared by every source: plan from the headers, read
    the arrays that load, check them, then assign (nothing before every check passed)."""
    check_dtypes(index, path)
    plan = _plan(model, index, key_map, path)
    if plan.problems:
        raise CheckpointMismatchError(
            f"{key_map.source} checkpoint {path} does not fit model {model.name!r} "
            f"({len(plan.problems)} problem(s)):\n  " + "\n  ".join(plan.problems))
    arrays = read_arrays([k for entry in plan.load for k in entry.keys])
    updates = _values(plan, arrays, model.get_layer("posembed_input"), key_map.cls in index,
                      path, key_map.resize)
    updates += [(entry.variable, np.zeros(_shape(entry.variable), np.float32))
                for entry in plan.reset]
    for variable, value in updates:
        variable.assign(value)
    if verbose:
        _log(plan, model)
    return plan.report


def load_timm(model: keras.Model, path, *, verbose: bool = True, config=None,
              numerics=None) -> Dict[str, list]:
    """Loads a timm ViT ``.safetensors`` checkpoint into a built keras_vit model.

    The same checks, guarantees and transfer rules as :func:`load_pretrained` (all keys,
    shapes, dtypes and values checked before any weight changes; the head dropped for
    ``include_top=False``, re-initialised for another class count or a checkpoint without
    head; position embeddings resized), with timm's key map (:func:`timm_entries`; old
    timm's ``pre_logits.fc`` fills a model built with ``representation_size``). For the model to
    compute what timm computes, build it with timm's numerics (``keras_vit.ViT(weights=path)``
    and the named builders do; see :mod:`keras_vit.sources`); a model whose GELU, LayerNorm
    epsilon or (hybrids) GroupNorm / weight-standardisation epsilon differs is loaded all the
    same, with a warning.

    Args:
        model: a keras_vit model.
        path: the ``.safetensors`` file of a timm ``VisionTransformer`` (plain or hybrid).
        verbose: log what was dropped, re-initialised or resized.
        config: the checkpoint's parsed timm hub ``config.json``, if any: the GELU variant
            and LayerNorm epsilon timm computes with come from it (QuickGELU CLIP towers,
            CLIP's epsilon 1e-5, SigLIP's tanh GELU), for the warning above.
        numerics: those numerics themselves (they take precedence over ``config``).

    Returns:
        The report of :func:`load_pretrained`, with timm's keys.
    """
    path = os.fspath(path)
    index = read_safetensors_index(path)
    if any(key.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for key in index):
        raise CheckpointError(f"{path} is a transformers checkpoint: pass its model directory "
                              "(config.json + model.safetensors) instead")
    report = _load(model, path, index, lambda keys: read_safetensors_arrays(path, keys), TIMM,
                   verbose)
    source = dict(source_numerics(path), **timm_config_numerics(config, path))
    _warn_other_numerics(model, dict(source, **(numerics or {})), "timm")
    return report


def load_transformers(model: keras.Model, directory, *, verbose: bool = True) -> Dict[str, list]:
    """Loads a transformers ViT model directory (``config.json`` + ``model.safetensors``,
    e.g. ``google/vit-base-patch16-224``) into a built keras_vit model.

    As :func:`load_timm`, with transformers' key map of the directory's ``model_type``
    (:func:`transformers_entries`): ``ViTForImageClassification`` (keys ``vit.*`` and
    ``classifier.*``) and ``ViTModel`` (its ``pooler`` is the pre-logits layer, dropped when
    the model has none), and the family's (DeiT, DINOv2, CLIP and SigLIP image towers; a
    full ``CLIPModel`` / ``SiglipModel`` directory's text tower is left out). See
    :func:`keras_vit.from_transformers` for a model built from the ``config.json``.

    Args:
        model: a keras_vit model.
        directory: the transformers model directory.
        verbose: log what was dropped, re-initialised or resized.

    Returns:
        The report of :func:`load_pretrained`, with transformers' keys.
    """
    config = read_transformers_config(directory)
    path = transformers_weights_file(directory)
    index = read_safetensors_index(path)
    if any(layer.name == "pre_logits" for layer in model.layers):
        check_pooler_act(config, directory, index)
    key_map = transformers_key_map(index, config["model_type"])
    # A CLIP / SigLIP model's text tower, a pre-training mask token: not the image model's.
    index = {key: info for key, info in index.items() if not key.startswith(key_map.ignored)}
    report = _load(model, path, index, lambda keys: read_safetensors_arrays(path, keys),
                   key_map, verbose)
    _warn_other_numerics(model, source_numerics(directory), "transformers")
    return report
