"""The key map of transformers' ViT checkpoints (``ViTForImageClassification``, ``ViTModel``):
separate query/key/value (D, D) weights, transposed and put side by side; and where a
transformers model directory keeps its weights (:func:`transformers_weights_file`)."""
from __future__ import annotations

import os
from typing import List

import keras
import numpy as np

from keras_vit.checkpoints.key_map import (Entry, KeyMap, _block_index, _conv, _flatten,
                                           _linear, _same, _torch_norm, walk)
from keras_vit.errors import CheckpointError
from keras_vit.sources import refuse_pickle


def _side_by_side(arrays):
    return np.concatenate([a.T for a in arrays], axis=1)



def _block_entries(layer, prefix: str) -> List[Entry]:
    p = f"{prefix}encoder.layer.{_block_index(layer)}"
    att = f"{p}.attention.attention"
    dim = layer.hidden_size
    qkv = ("query", "key", "value")
    return [
        _same(f"{p}.layernorm_before.weight", layer.ln1_gamma),
        _same(f"{p}.layernorm_before.bias", layer.ln1_beta),
        Entry([f"{att}.{n}.weight" for n in qkv], layer.qkv_kernel, [(dim, dim)] * 3,
              _side_by_side),
        Entry([f"{att}.{n}.bias" for n in qkv], layer.qkv_bias, [(dim,)] * 3,
              _flatten),
        _linear(f"{p}.attention.output.dense.weight", layer.out_kernel),
        _same(f"{p}.attention.output.dense.bias", layer.out_bias),
        _same(f"{p}.layernorm_after.weight", layer.ln2_gamma),
        _same(f"{p}.layernorm_after.bias", layer.ln2_beta),
        _linear(f"{p}.intermediate.dense.weight", layer.mlp1_kernel),
        _same(f"{p}.intermediate.dense.bias", layer.mlp1_bias),
        _linear(f"{p}.output.dense.weight", layer.mlp2_kernel),
        _same(f"{p}.output.dense.bias", layer.mlp2_bias)]


def _position_entries(layer, emb: str) -> List[Entry]:
    cls = [_same(f"{emb}.cls_token", layer.cls)] if layer.class_token else []
    return cls + [Entry([f"{emb}.position_embeddings"], layer.pos_embedding, None,
                        kind="posemb")]


def transformers_entries(model: keras.Model, prefix: str = "vit.") -> List[Entry]:
    """The transformers key map (``ViTForImageClassification``; ``ViTModel`` with
    ``prefix=""``, whose ``pooler`` is the pre-logits layer)."""
    emb = f"{prefix}embeddings"
    return walk(model, {
        "patches": lambda layer: [
            _conv(f"{emb}.patch_embeddings.projection.weight", layer.kernel),
            _same(f"{emb}.patch_embeddings.projection.bias", layer.bias)],
        "position": lambda layer: _position_entries(layer, emb),
        "block": lambda layer: _block_entries(layer, prefix),
        "encoder_norm": lambda layer: _torch_norm(f"{prefix}layernorm", layer),
        "pre_logits": lambda layer: [_linear("pooler.dense.weight", layer.kernel),
                                     _same("pooler.dense.bias", layer.bias)],
        "head": lambda layer: [_linear("classifier.weight", layer.kernel, "head"),
                               _same("classifier.bias", layer.bias, "head")],
    })


def transformers_prefix(index) -> str:
    """``"vit."`` for ``ViTForImageClassification`` keys, ``""`` for a bare ``ViTModel``'s."""
    return "vit." if any(key.startswith("vit.") for key in index) else ""


def transformers_key_map(index) -> KeyMap:
    """The transformers layout of a checkpoint (:func:`transformers_prefix`)."""
    prefix = transformers_prefix(index)
    return KeyMap("transformers", lambda model: transformers_entries(model, prefix),
                  f"{prefix}embeddings.cls_token", "classifier.", "pooler.")



def transformers_weights_file(directory) -> str:
    """The ``model.safetensors`` of a transformers model directory, or a clear error."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "model.safetensors")
    if os.path.exists(path):
        return path
    pickled = [name for name in ("pytorch_model.bin", "model.pt", "model.pth")
               if os.path.exists(os.path.join(directory, name))]
    if pickled:
        refuse_pickle(os.path.join(directory, pickled[0]))
    if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
        raise CheckpointError(f"{directory}: sharded safetensors checkpoints are not supported; "
                              "save the model as one model.safetensors")
    raise CheckpointError(f"{directory} has no model.safetensors")
