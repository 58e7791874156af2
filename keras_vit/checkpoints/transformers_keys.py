"""The key maps of transformers' ViT family checkpoints: ViT (``ViTForImageClassification``,
``ViTModel``), DeiT (``DeiTForImageClassification``, ``...WithTeacher``, ``DeiTModel``),
DINOv2 (``Dinov2Model``, ``Dinov2ForImageClassification``, and with registers), CLIP image
towers (``CLIPVisionModel``, ``CLIPVisionModelWithProjection``, a ``CLIPModel``'s vision
tower) and SigLIP image towers (``SiglipVisionModel``, a ``SiglipModel``'s vision tower);
and where a transformers model directory keeps its weights (:func:`transformers_weights_file`).

Each ``model_type`` is a :class:`Layout` (the names of its modules, as ``save_pretrained``
writes them); one walk of the keras_vit model (:func:`transformers_entries`) maps them all.
transformers keeps separate query / key / value (D, D) weights: transposed and put side by
side here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Tuple

import keras
import numpy as np

from keras_vit.checkpoints.key_map import (Entry, KeyMap, _block_index, _conv, _flatten,
                                           _linear, _same, _shape, _torch_norm, walk)
from keras_vit.errors import CheckpointError
from keras_vit.sources import refuse_pickle


def _side_by_side(arrays):
    return np.concatenate([a.T for a in arrays], axis=1)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one transformers ``model_type`` keeps each weight.

    Keys of the base model are relative to ``base`` (``"deit."`` in a task model such as
    ``DeiTForImageClassification``; absent in a bare ``DeiTModel``). ``block`` names the
    modules of one layer: LayerNorm 1, query, key, value, attention output, LayerNorm 2, MLP
    in, MLP out, and (DINOv2) the two LayerScale parameters.
    """

    base: str
    patch: str  # the patch convolution (``.weight``, ``.bias``)
    position: str  # (1, tokens, D), or an nn.Embedding's (tokens, D) ``.weight``
    cls: str  # the class token: (1, 1, D), or CLIP's (D,); "" without one
    layer: str  # "encoder.layer" or "encoder.layers"
    block: Tuple[str, ...]
    final_norm: str
    dist: str = ""  # DeiT's distillation token
    registers: str = ""  # DINOv2's register tokens (no position embeddings of their own)
    pre_norm: str = ""  # CLIP's LayerNorm before the blocks
    map_head: str = ""  # SigLIP's attention-pooling head
    ignored: Tuple[str, ...] = ()  # keys of what keras_vit does not compute
    # interpolate_pos_encoding's resize (PyTorch bicubic; DINOv2 with registers antialiased):
    # what loading for another image size computes (:func:`resize_position_embeddings`).
    resize: str = "torch_bicubic"


_VIT_BLOCK = ("layernorm_before", "attention.attention.query", "attention.attention.key",
              "attention.attention.value", "attention.output.dense", "layernorm_after",
              "intermediate.dense", "output.dense")
_DINO_BLOCK = ("norm1", "attention.attention.query", "attention.attention.key",
               "attention.attention.value", "attention.output.dense", "norm2", "mlp.fc1",
               "mlp.fc2", "layer_scale1.lambda1", "layer_scale2.lambda1")
_CLIP_BLOCK = ("layer_norm1", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
               "self_attn.out_proj", "layer_norm2", "mlp.fc1", "mlp.fc2")
_VIT = dict(patch="embeddings.patch_embeddings.projection",
            position="embeddings.position_embeddings", cls="embeddings.cls_token",
            layer="encoder.layer", final_norm="layernorm")
_CLIP = dict(base="vision_model.", patch="embeddings.patch_embedding",
             position="embeddings.position_embedding.weight", layer="encoder.layers",
             block=_CLIP_BLOCK, final_norm="post_layernorm")
# The towers' other halves (a full CLIPModel / SiglipModel directory): not image towers.
_TEXT = ("text_model.", "text_projection.", "logit_scale", "logit_bias")
_MASK = ("embeddings.mask_token",)  # masked-image-modelling pre-training only

LAYOUTS = {
    "vit": Layout(base="vit.", block=_VIT_BLOCK, resize="bilinear", **_VIT),
    "deit": Layout(base="deit.", block=_VIT_BLOCK, dist="embeddings.distillation_token",
                   ignored=_MASK, **_VIT),
    "dinov2": Layout(base="dinov2.", block=_DINO_BLOCK, ignored=_MASK, **_VIT),
    "dinov2_with_registers": Layout(
        base="dinov2_with_registers.", block=_DINO_BLOCK, registers="embeddings.register_tokens",
        ignored=_MASK, resize="torch_bicubic_antialias", **_VIT),
    "clip_vision_model": Layout(cls="embeddings.class_embedding", pre_norm="pre_layrnorm",
                                **_CLIP),
    "clip": Layout(cls="embeddings.class_embedding", pre_norm="pre_layrnorm", ignored=_TEXT,
                   **_CLIP),
    "siglip_vision_model": Layout(cls="", map_head="head", **_CLIP),
    "siglip": Layout(cls="", map_head="head", ignored=_TEXT, **_CLIP),
}
# The classifier keys of each model type's task models (task level: no base prefix).
HEADS = {"vit": "classifier.", "deit": ("classifier.", "cls_classifier.",
                                        "distillation_classifier."),
         "dinov2": "classifier.", "dinov2_with_registers": "classifier.",
         "clip_vision_model": "visual_projection.", "clip": "visual_projection.",
         "siglip_vision_model": "classifier.", "siglip": "classifier."}


def transformers_prefix(index, model_type: str = "vit") -> str:
    """The base model's prefix of a checkpoint's keys: ``"vit."`` (``"deit."``, ...) for a
    task model's, ``""`` for a bare base model's (``ViTModel``, ``Dinov2Model``)."""
    base = LAYOUTS[model_type].base
    return base if any(key.startswith(base) for key in index) else ""


def _block_entries(layer, layout: Layout, prefix: str) -> List[Entry]:
    p = f"{prefix}{layout.layer}.{_block_index(layer)}"
    ln1, q, k, v, out, ln2, fc1, fc2, *scales = (f"{p}.{name}" for name in layout.block)
    dim = layer.hidden_size
    entries = [
        _same(f"{ln1}.weight", layer.ln1_gamma), _same(f"{ln1}.bias", layer.ln1_beta),
        Entry([f"{n}.weight" for n in (q, k, v)], layer.qkv_kernel, [(dim, dim)] * 3,
              _side_by_side),
        Entry([f"{n}.bias" for n in (q, k, v)], layer.qkv_bias, [(dim,)] * 3, _flatten),
        _linear(f"{out}.weight", layer.out_kernel), _same(f"{out}.bias", layer.out_bias),
        _same(f"{ln2}.weight", layer.ln2_gamma), _same(f"{ln2}.bias", layer.ln2_beta),
        _linear(f"{fc1}.weight", layer.mlp1_kernel), _same(f"{fc1}.bias", layer.mlp1_bias),
        _linear(f"{fc2}.weight", layer.mlp2_kernel), _same(f"{fc2}.bias", layer.mlp2_bias)]
    if layer.ls1_gamma is not None:
        entries += [_same(scales[0], layer.ls1_gamma), _same(scales[1], layer.ls2_gamma)]
    return entries


def _position_entries(layer, layout: Layout, prefix: str, index) -> List[Entry]:
    """Class (CLIP: a (D,) vector), distillation and register tokens, and the position
    embeddings: an nn.Embedding's (tokens, D) gets its batch axis. DINOv2 with registers
    has an embedding for the class token but none for the registers: it is added to the
    class token here, and the model's embeddings cover the patches (``embed_prefix=False``),
    which computes the same sums."""
    pos, entries = prefix + layout.position, []
    folded = layout.registers and not layer.embed_prefix and layer.class_token
    if layer.class_token:
        cls = prefix + layout.cls
        if folded:
            found = tuple(index[pos].shape) if pos in index else (1, 1, layer.hidden_size)
            entries.append(Entry([cls, pos], layer.cls, [_shape(layer.cls), found],
                                 lambda a: a[0] + a[1][:, :1]))
        else:
            entries.append(Entry([cls], layer.cls, [(layer.hidden_size,)] if layout.cls.endswith(
                "class_embedding") else [_shape(layer.cls)]))
    if layer.distillation_token:
        entries.append(_same(prefix + layout.dist, layer.dist))
    if layer.num_register_tokens:
        entries.append(_same(prefix + layout.registers, layer.registers))
    if layout.position.endswith(".weight"):  # nn.Embedding: (tokens, D)
        entries.append(Entry([pos], layer.pos_embedding, None, lambda a: a[0][None],
                             kind="posemb", posemb_shape=lambda f: (1,) + tuple(f[0])))
    elif folded:
        entries.append(Entry([pos], layer.pos_embedding, None, lambda a: a[0][:, 1:],
                             kind="posemb", posemb_shape=lambda f: (
                                 f[0][0], f[0][1] - 1) + tuple(f[0][2:]) if len(f[0]) == 3
                             else tuple(f[0])))
    else:
        entries.append(Entry([pos], layer.pos_embedding, None, kind="posemb"))
    return entries


def _map_entries(layer, key: str) -> List[Entry]:
    """SigLIP's ``SiglipMultiheadAttentionPoolingHead``: probe, torch's MultiheadAttention
    (``in_proj_weight`` (3D, D): query rows, then key and value rows), LayerNorm, MLP."""
    dim = layer.hidden_size
    attention = f"{key}.attention"
    return [_same(f"{key}.probe", layer.probe),
            Entry([f"{attention}.in_proj_weight"], layer.q_kernel, [(3 * dim, dim)],
                  lambda a: a[0][:dim].T),
            Entry([f"{attention}.in_proj_bias"], layer.q_bias, [(3 * dim,)],
                  lambda a: a[0][:dim]),
            Entry([f"{attention}.in_proj_weight"], layer.kv_kernel, [(3 * dim, dim)],
                  lambda a: a[0][dim:].T),
            Entry([f"{attention}.in_proj_bias"], layer.kv_bias, [(3 * dim,)],
                  lambda a: a[0][dim:]),
            _linear(f"{attention}.out_proj.weight", layer.out_kernel),
            _same(f"{attention}.out_proj.bias", layer.out_bias),
            _same(f"{key}.layernorm.weight", layer.ln_gamma),
            _same(f"{key}.layernorm.bias", layer.ln_beta),
            _linear(f"{key}.mlp.fc1.weight", layer.mlp1_kernel),
            _same(f"{key}.mlp.fc1.bias", layer.mlp1_bias),
            _linear(f"{key}.mlp.fc2.weight", layer.mlp2_kernel),
            _same(f"{key}.mlp.fc2.bias", layer.mlp2_bias)]


def _head_entries(layer, model_type: str, index) -> List[Entry]:
    """The classifier: ``classifier`` (DeiT with teacher: ``cls_classifier``), or (a new
    head, ``num_classes=``, in place of a CLIP tower's ``projection``) CLIP's
    ``visual_projection`` (no bias: the head's bias is zero; reset unless it fits)."""
    if model_type in ("clip", "clip_vision_model"):
        units = _shape(layer.kernel)
        return [_linear("visual_projection.weight", layer.kernel, "head"),
                Entry(["visual_projection.weight"], layer.bias, [units[::-1]],
                      lambda a: np.zeros(a[0].shape[:1], a[0].dtype), "head")]
    name = "cls_classifier" if "cls_classifier.weight" in index else "classifier"
    return [_linear(f"{name}.weight", layer.kernel, "head"),
            _same(f"{name}.bias", layer.bias, "head")]


def transformers_entries(model: keras.Model, prefix: str = "vit.", model_type: str = "vit",
                         index=()) -> List[Entry]:
    """The transformers key map of ``model_type`` (:data:`LAYOUTS`) with the base model's
    keys under ``prefix`` (:func:`transformers_prefix`); ``index`` (the checkpoint's keys)
    tells DeiT's two heads from one. A bare ``ViTModel`` / ``DeiTModel``'s ``pooler`` is the
    pre-logits layer."""
    layout = LAYOUTS[model_type]
    return walk(model, {
        "patches": lambda layer: [_conv(f"{prefix}{layout.patch}.weight", layer.kernel)] + (
            [_same(f"{prefix}{layout.patch}.bias", layer.bias)] if layer.use_bias else []),
        "position": lambda layer: _position_entries(layer, layout, prefix, index),
        "pre_norm": lambda layer: _torch_norm(prefix + layout.pre_norm, layer),
        "block": lambda layer: _block_entries(layer, layout, prefix),
        "encoder_norm": lambda layer: _torch_norm(prefix + layout.final_norm, layer),
        "attn_pool": lambda layer: _map_entries(layer, prefix + layout.map_head),
        "pre_logits": lambda layer: [_linear("pooler.dense.weight", layer.kernel),
                                     _same("pooler.dense.bias", layer.bias)],
        "head": lambda layer: _head_entries(layer, model_type, index),
        "projection": lambda layer: [_linear("visual_projection.weight", layer.kernel)],
        "head_dist": lambda layer: [
            _linear("distillation_classifier.weight", layer.kernel, "head"),
            _same("distillation_classifier.bias", layer.bias, "head")],
    })


def transformers_key_map(index, model_type: str = "vit") -> KeyMap:
    """The transformers layout of a checkpoint of ``model_type``
    (:func:`transformers_prefix`)."""
    prefix = transformers_prefix(index, model_type)
    layout = LAYOUTS[model_type]
    return KeyMap("transformers",
                  lambda model: transformers_entries(model, prefix, model_type, index),
                  prefix + layout.cls if layout.cls else "", HEADS[model_type], "pooler.",
                  ignored=layout.ignored + tuple(prefix + key for key in layout.ignored),
                  resize=layout.resize)


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
