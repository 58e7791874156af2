"""Loading the original release's ``.npz`` checkpoints into keras_vit models.

The one key map of the project lives here (:func:`checkpoint_entries`): every keras_vit
weight and the original (Flax, '/'-joined) key(s) it comes from. Layer names in keras_vit
models mirror the original module names, so the map is short:

=============================================  ==============================================
original key                                   keras_vit weight
=============================================  ==============================================
``embedding/{kernel,bias}``                     ``embedding`` (Patches) kernel (HWIO), bias
``cls``                                         ``posembed_input.cls``
``Transformer/posembed_input/pos_embedding``    ``posembed_input.pos_embedding`` (resized)
``Transformer/encoderblock_{i}/LayerNorm_0``    ``encoderblock_{i}.ln1_{gamma,beta}``
``.../MultiHeadDotProductAttention_1/{query,    ``encoderblock_{i}.qkv_kernel`` (D, 3D): the
key,value}/kernel`` (D, H, D/H)                 three reshaped to (D, D), side by side
``.../{query,key,value}/bias`` (H, D/H)         ``encoderblock_{i}.qkv_bias`` (3D,)
``.../MultiHeadDotProductAttention_1/out``      ``encoderblock_{i}.out_{kernel,bias}``
``.../LayerNorm_2``                             ``encoderblock_{i}.ln2_{gamma,beta}``
``.../MlpBlock_3/Dense_{0,1}``                  ``encoderblock_{i}.mlp{1,2}_{kernel,bias}``
``Transformer/encoder_norm``                    ``encoder_norm`` gamma, beta
``pre_logits``, ``head``                        Dense layers of the same names
``conv_root/kernel``, ``gn_root``               hybrid stem (GroupNorm (1,1,1,C) squeezed)
``block{s}/unit{u}/{conv,gn}{1,2,3,_proj}``     ``block{s}_unit{u}`` (ResNetUnit) sublayers
=============================================  ==============================================
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from typing import Callable, Dict, List, Sequence

import keras
import numpy as np

from keras_vit.layers import PatchEncoder, Patches, ResNetUnit, StdConv2D, TransformerBlock
from keras_vit.position_embeddings import resize_position_embeddings

logger = logging.getLogger("keras_vit")

POS_EMBEDDING_KEY = "Transformer/posembed_input/pos_embedding"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


@dataclasses.dataclass
class Entry:
    """One keras_vit weight and how to fill it from original checkpoint arrays."""

    keys: Sequence[str]
    variable: keras.Variable
    combine: Callable[[List[np.ndarray]], np.ndarray] = lambda arrays: arrays[0]
    kind: str = "plain"  # "plain", "posemb" (resized to the grid) or "head" (may be reset)


def _concat_qkv(arrays):
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)


def _flatten(arrays):
    return np.concatenate([a.reshape(-1) for a in arrays])


def _out_kernel(arrays):
    heads, head_dim, dim = arrays[0].shape
    return arrays[0].reshape(heads * head_dim, dim)


def _group_norm_entries(prefix, layer):
    return [Entry([f"{prefix}/scale"], layer.gamma), Entry([f"{prefix}/bias"], layer.beta)]


def checkpoint_entries(model: keras.Model) -> List[Entry]:
    """The key map: one :class:`Entry` per weight of a keras_vit model."""
    entries: List[Entry] = []
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, Patches):
            entries += [Entry(["embedding/kernel"], layer.kernel),
                        Entry(["embedding/bias"], layer.bias)]
        elif isinstance(layer, PatchEncoder):
            if layer.num_prefix_tokens:
                entries.append(Entry(["cls"], layer.cls))
            entries.append(Entry([POS_EMBEDDING_KEY], layer.pos_embedding, kind="posemb"))
        elif isinstance(layer, TransformerBlock):
            p = f"Transformer/{name}"
            att = f"{p}/MultiHeadDotProductAttention_1"
            mlp = f"{p}/MlpBlock_3"
            entries += [
                Entry([f"{p}/LayerNorm_0/scale"], layer.ln1_gamma),
                Entry([f"{p}/LayerNorm_0/bias"], layer.ln1_beta),
                Entry([f"{att}/{n}/kernel" for n in ("query", "key", "value")],
                      layer.qkv_kernel, _concat_qkv),
                Entry([f"{att}/{n}/bias" for n in ("query", "key", "value")],
                      layer.qkv_bias, _flatten),
                Entry([f"{att}/out/kernel"], layer.out_kernel, _out_kernel),
                Entry([f"{att}/out/bias"], layer.out_bias),
                Entry([f"{p}/LayerNorm_2/scale"], layer.ln2_gamma),
                Entry([f"{p}/LayerNorm_2/bias"], layer.ln2_beta),
                Entry([f"{mlp}/Dense_0/kernel"], layer.mlp1_kernel),
                Entry([f"{mlp}/Dense_0/bias"], layer.mlp1_bias),
                Entry([f"{mlp}/Dense_1/kernel"], layer.mlp2_kernel),
                Entry([f"{mlp}/Dense_1/bias"], layer.mlp2_bias),
            ]
        elif name == "encoder_norm":
            entries += [Entry(["Transformer/encoder_norm/scale"], layer.gamma),
                        Entry(["Transformer/encoder_norm/bias"], layer.beta)]
        elif name in ("pre_logits", "head"):
            kind = "head" if name == "head" else "plain"
            entries += [Entry([f"{name}/kernel"], layer.kernel, kind=kind),
                        Entry([f"{name}/bias"], layer.bias, kind=kind)]
        elif isinstance(layer, StdConv2D):  # conv_root
            entries.append(Entry([f"{name}/kernel"], layer.kernel))
        elif isinstance(layer, keras.layers.GroupNormalization):  # gn_root
            entries += _group_norm_entries(name, layer)
        elif isinstance(layer, ResNetUnit):
            prefix = name.replace("_", "/")  # block{s}_unit{u} -> block{s}/unit{u}
            convs = ["conv1", "conv2", "conv3"] + (["conv_proj"] if layer.use_projection else [])
            for conv in convs:
                entries.append(Entry([f"{prefix}/{conv}/kernel"], getattr(layer, conv).kernel))
                gn = conv.replace("conv", "gn")
                entries += _group_norm_entries(f"{prefix}/{gn}", getattr(layer, gn))
    return entries


def read_npz(path) -> Dict[str, np.ndarray]:
    """Reads every array of an ``.npz`` checkpoint (no pickles), with clear errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise CheckpointError(f"{path} is a single .npy array, not an .npz checkpoint")
            return {key: data[key] for key in data.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): "
            f"{type(error).__name__}: {error}") from None


def _shape(array_or_var):
    return tuple(int(d) for d in array_or_var.shape)


def load_pretrained(model: keras.Model, path, *, verbose: bool = True) -> Dict[str, list]:
    """Loads an original ViT ``.npz`` checkpoint into a built keras_vit model.

    Follows the paper's transfer recipe: ``pre_logits`` is dropped when the model has no
    representation layer; a head whose shape differs (another class count) is set to zeros
    instead (a fresh zero-initialised D x K layer, paper section 3.1); position embeddings
    are resized to the model's grid with aligned-corners bilinear interpolation (section
    3.2). GroupNorm parameters stored as (1, 1, 1, C) are squeezed. Anything else that does
    not fit raises :class:`CheckpointMismatchError` listing every offending key, and then
    no weight of the model has been changed.

    Returns a report: ``{"loaded": [...], "dropped": [...], "reinitialized": [...],
    "resized": [...]}`` of original keys.
    """
    arrays = read_npz(path)
    entries = checkpoint_entries(model)
    report = {"loaded": [], "dropped": [], "reinitialized": [], "resized": []}
    problems, updates, used = [], [], set()
    encoder = model.get_layer("posembed_input")
    has_cls = "cls" in arrays

    for entry in entries:
        expected = _shape(entry.variable)
        missing = [k for k in entry.keys if k not in arrays]
        if missing:
            for key in missing:
                problems.append(f"missing key {key!r} (model expects a value for "
                                f"{entry.variable.path}, shape {expected})")
            continue
        used.update(entry.keys)
        try:
            value = entry.combine([arrays[k] for k in entry.keys])
        except ValueError as error:
            shapes = [_shape(arrays[k]) for k in entry.keys]
            problems.append(f"{', '.join(entry.keys)}: found shapes {shapes} that cannot form "
                            f"{entry.variable.path} of shape {expected} ({error})")
            continue
        key = entry.keys[0]
        if entry.kind == "posemb" and value.ndim == 3 and value.shape[-1] == expected[-1]:
            value = _fit_position_embeddings(value, encoder, has_cls, report)
        if entry.kind == "head" and _shape(value) != expected:
            report["reinitialized"].append(key)
            value = np.zeros(expected, dtype=np.float32)
        elif _shape(value) != expected and value.size == int(np.prod(expected)) and \
                value.ndim == 4 and value.shape[:3] == (1, 1, 1):
            value = value.reshape(expected)  # GroupNorm (1, 1, 1, C)
        if _shape(value) != expected:
            problems.append(f"{key}: expected shape {expected}, found {_shape(value)}")
            continue
        updates.append((entry.variable, value))
        report["loaded"].extend(entry.keys)

    for key in sorted(set(arrays) - used):
        if key.startswith("pre_logits/") or (key == "cls" and not encoder.num_prefix_tokens):
            report["dropped"].append(key)
        else:
            problems.append(f"unexpected key {key!r} (shape {_shape(arrays[key])}) has no "
                            "place in this model")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {os.fspath(path)} does not fit model {model.name!r} "
            f"({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    for variable, value in updates:
        variable.assign(value.astype(np.float32))
    if verbose:
        if report["dropped"]:
            logger.warning("keras_vit: not loaded (no place in this model, as when "
                           "fine-tuning): %s", ", ".join(report["dropped"]))
        if report["reinitialized"]:
            logger.warning("keras_vit: the checkpoint's head does not fit %d classes; the head "
                           "is zero-initialised for fine-tuning",
                           model.get_layer("head").units)
        if report["resized"]:
            logger.warning("keras_vit: position embeddings resized: %s",
                           "; ".join(report["resized"]))
    return report


def _fit_position_embeddings(value, encoder, has_cls, report):
    """Drops the class token's embedding if the model has none, then resizes the grid."""
    ckpt_prefix = 1 if has_cls else 0
    if ckpt_prefix and not encoder.num_prefix_tokens:
        value = value[:, 1:]
        ckpt_prefix = 0
    grid_tokens = value.shape[1] - ckpt_prefix
    side = int(np.sqrt(grid_tokens))
    if side * side != grid_tokens or ckpt_prefix != encoder.num_prefix_tokens:
        return value  # not a square grid: reported as a shape problem
    if (side, side) != tuple(encoder.grid_size):
        report["resized"].append(f"{POS_EMBEDDING_KEY} grid {(side, side)} -> "
                                 f"{tuple(encoder.grid_size)}")
        value = resize_position_embeddings(value, encoder.grid_size, ckpt_prefix,
                                           old_grid=(side, side))
    return value
