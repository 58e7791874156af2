"""The key map of timm's ViT ``.safetensors`` checkpoints (``VisionTransformer``, hybrids
with the ``ResNetV2`` backbone of ``vision_transformer_hybrid``): timm's fused qkv weight
(3D, D) is the fused kernel transposed."""
from __future__ import annotations

from typing import List, Tuple

import keras

from keras_vit.checkpoints.key_map import (Entry, KeyMap, _block_index, _conv, _linear, _same,
                                           _torch_norm, walk)


def _unit_indices(layer) -> Tuple[int, int]:
    stage, unit = layer.name.split("_")  # block{s}_unit{u}, 1-based
    return int(stage[len("block"):]) - 1, int(unit[len("unit"):]) - 1



_BACKBONE = "patch_embed.backbone"


def _position_entries(layer) -> List[Entry]:
    cls = [_same("cls_token", layer.cls)] if layer.num_prefix_tokens else []
    return cls + [Entry(["pos_embed"], layer.pos_embedding, None, kind="posemb")]


def _block_entries(layer) -> List[Entry]:
    p = f"blocks.{_block_index(layer)}"
    return [
        _same(f"{p}.norm1.weight", layer.ln1_gamma),
        _same(f"{p}.norm1.bias", layer.ln1_beta),
        _linear(f"{p}.attn.qkv.weight", layer.qkv_kernel),
        _same(f"{p}.attn.qkv.bias", layer.qkv_bias),
        _linear(f"{p}.attn.proj.weight", layer.out_kernel),
        _same(f"{p}.attn.proj.bias", layer.out_bias),
        _same(f"{p}.norm2.weight", layer.ln2_gamma),
        _same(f"{p}.norm2.bias", layer.ln2_beta),
        _linear(f"{p}.mlp.fc1.weight", layer.mlp1_kernel),
        _same(f"{p}.mlp.fc1.bias", layer.mlp1_bias),
        _linear(f"{p}.mlp.fc2.weight", layer.mlp2_kernel),
        _same(f"{p}.mlp.fc2.bias", layer.mlp2_bias)]


def _unit_entries(layer) -> List[Entry]:
    stage, unit = _unit_indices(layer)
    p = f"{_BACKBONE}.stages.{stage}.blocks.{unit}"
    entries = []
    for i in (1, 2, 3):
        entries.append(_conv(f"{p}.conv{i}.weight", getattr(layer, f"conv{i}").kernel))
        entries += _torch_norm(f"{p}.norm{i}", getattr(layer, f"gn{i}"))
    if layer.use_projection:
        entries.append(_conv(f"{p}.downsample.conv.weight", layer.conv_proj.kernel))
        entries += _torch_norm(f"{p}.downsample.norm", layer.gn_proj)
    return entries


def timm_entries(model: keras.Model) -> List[Entry]:
    """The timm key map (``timm.models.vision_transformer.VisionTransformer``, hybrids with
    the ``ResNetV2`` backbone of ``vision_transformer_hybrid``)."""
    return walk(model, {
        "patches": lambda layer: [_conv("patch_embed.proj.weight", layer.kernel),
                                  _same("patch_embed.proj.bias", layer.bias)],
        "position": _position_entries,
        "block": _block_entries,
        "encoder_norm": lambda layer: _torch_norm("norm", layer),
        # timm < 0.9: Sequential(fc=Linear(D, R), act=Tanh)
        "pre_logits": lambda layer: [_linear("pre_logits.fc.weight", layer.kernel),
                                     _same("pre_logits.fc.bias", layer.bias)],
        "head": lambda layer: [_linear("head.weight", layer.kernel, "head"),
                               _same("head.bias", layer.bias, "head")],
        "conv_root": lambda layer: [_conv(f"{_BACKBONE}.stem.conv.weight", layer.kernel)],
        "gn_root": lambda layer: _torch_norm(f"{_BACKBONE}.stem.norm", layer),
        "unit": _unit_entries,
    })


TIMM = KeyMap("timm", timm_entries, "cls_token", "head.", "pre_logits.", hints={
    "fc_norm.": "timm's fc_norm (LayerNorm after average pooling); keras_vit normalises "
                "before pooling, as the original: timm models with fc_norm=False load",
    "reg_token": "register tokens are not part of keras_vit's ViT",
    "norm_pre.": "a LayerNorm before the blocks (CLIP-style) is not part of keras_vit's ViT"})
