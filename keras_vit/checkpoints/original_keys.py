"""The key map of the original release's ``.npz`` checkpoints (:func:`checkpoint_entries`).
Layer names in keras_vit models mirror the original module names, so the map is short:

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

from typing import List

import keras
import numpy as np

from keras_vit.checkpoints.key_map import Entry, KeyMap, _flatten, _same, _shape, walk

POS_EMBEDDING_KEY = "Transformer/posembed_input/pos_embedding"


def _concat_qkv(arrays):
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)



def _out_kernel(arrays):
    heads, head_dim, dim = arrays[0].shape
    return arrays[0].reshape(heads * head_dim, dim)



def _group_norm_entries(prefix, layer):
    # The original stores GroupNorm parameters as (1, 1, 1, C).
    return [Entry([f"{prefix}/scale"], layer.gamma, [(1, 1, 1) + _shape(layer.gamma)]),
            Entry([f"{prefix}/bias"], layer.beta, [(1, 1, 1) + _shape(layer.beta)])]


def _block_entries(p, layer):
    att = f"{p}/MultiHeadDotProductAttention_1"
    mlp = f"{p}/MlpBlock_3"
    dim, heads = layer.hidden_size, layer.num_heads
    per_head = (heads, dim // heads)
    qkv = ("query", "key", "value")
    return [
        _same(f"{p}/LayerNorm_0/scale", layer.ln1_gamma),
        _same(f"{p}/LayerNorm_0/bias", layer.ln1_beta),
        Entry([f"{att}/{n}/kernel" for n in qkv], layer.qkv_kernel, [(dim,) + per_head] * 3,
              _concat_qkv),
        Entry([f"{att}/{n}/bias" for n in qkv], layer.qkv_bias, [per_head] * 3, _flatten),
        Entry([f"{att}/out/kernel"], layer.out_kernel, [per_head + (dim,)], _out_kernel),
        _same(f"{att}/out/bias", layer.out_bias),
        _same(f"{p}/LayerNorm_2/scale", layer.ln2_gamma),
        _same(f"{p}/LayerNorm_2/bias", layer.ln2_beta),
        _same(f"{mlp}/Dense_0/kernel", layer.mlp1_kernel),
        _same(f"{mlp}/Dense_0/bias", layer.mlp1_bias),
        _same(f"{mlp}/Dense_1/kernel", layer.mlp2_kernel),
        _same(f"{mlp}/Dense_1/bias", layer.mlp2_bias),
    ]


def _position_entries(layer) -> List[Entry]:
    cls = [_same("cls", layer.cls)] if layer.class_token else []
    return cls + [Entry([POS_EMBEDDING_KEY], layer.pos_embedding, None, kind="posemb")]


def _dense_entries(layer) -> List[Entry]:  # pre_logits, head
    kind = "head" if layer.name == "head" else "plain"
    return [_same(f"{layer.name}/kernel", layer.kernel, kind),
            _same(f"{layer.name}/bias", layer.bias, kind)]


def _unit_entries(layer) -> List[Entry]:
    prefix = layer.name.replace("_", "/")  # block{s}_unit{u} -> block{s}/unit{u}
    convs = ["conv1", "conv2", "conv3"] + (["conv_proj"] if layer.use_projection else [])
    entries = []
    for conv in convs:
        entries.append(_same(f"{prefix}/{conv}/kernel", getattr(layer, conv).kernel))
        gn = conv.replace("conv", "gn")
        entries += _group_norm_entries(f"{prefix}/{gn}", getattr(layer, gn))
    return entries


def checkpoint_entries(model: keras.Model) -> List[Entry]:
    """The key map: one :class:`Entry` per weight of a keras_vit model."""
    return walk(model, {
        "patches": lambda layer: [_same("embedding/kernel", layer.kernel),
                                  _same("embedding/bias", layer.bias)],
        "position": _position_entries,
        "block": lambda layer: _block_entries(f"Transformer/{layer.name}", layer),
        "encoder_norm": lambda layer: [_same("Transformer/encoder_norm/scale", layer.gamma),
                                       _same("Transformer/encoder_norm/bias", layer.beta)],
        "pre_logits": _dense_entries,
        "head": _dense_entries,
        "conv_root": lambda layer: [_same(f"{layer.name}/kernel", layer.kernel)],
        "gn_root": lambda layer: _group_norm_entries(layer.name, layer),
        "unit": _unit_entries,
    })


ORIGINAL = KeyMap("original .npz", checkpoint_entries, "cls", "head/", "pre_logits/")
