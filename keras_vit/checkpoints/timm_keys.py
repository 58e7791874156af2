"""The key map of timm's ViT ``.safetensors`` checkpoints (``VisionTransformer``, hybrids
with the ``ResNetV2`` backbone of ``vision_transformer_hybrid``): timm's fused qkv weight
(3D, D) is the fused kernel transposed."""
from __future__ import annotations

from typing import List, Tuple

import keras
import numpy as np

from keras_vit.checkpoints.key_map import (Entry, KeyMap, _block_index, _conv, _linear, _same,
                                           _shape, _torch_norm, walk)
from keras_vit.errors import CheckpointError


def _unit_indices(layer) -> Tuple[int, int]:
    stage, unit = layer.name.split("_")  # block{s}_unit{u}, 1-based
    return int(stage[len("block"):]) - 1, int(unit[len("unit"):]) - 1



_BACKBONE = "patch_embed.backbone"


def _position_entries(layer) -> List[Entry]:
    cls = [_same("cls_token", layer.cls)] if layer.class_token else []
    extra = ([_same("dist_token", layer.dist)] if layer.distillation_token else []) + (
        [_same("reg_token", layer.registers)] if layer.num_register_tokens else [])
    return cls + [Entry(["pos_embed"], layer.pos_embedding, None, kind="posemb")] + extra


def _attention_pool_entries(layer) -> List[Entry]:
    """timm's ``AttentionPoolLatent`` (``global_pool="map"``): latent probe, q, fused kv
    (its first D outputs are the keys), proj, norm, mlp."""
    p = "attn_pool"
    return [_same(f"{p}.latent", layer.probe),
            _linear(f"{p}.q.weight", layer.q_kernel), _same(f"{p}.q.bias", layer.q_bias),
            _linear(f"{p}.kv.weight", layer.kv_kernel), _same(f"{p}.kv.bias", layer.kv_bias),
            _linear(f"{p}.proj.weight", layer.out_kernel),
            _same(f"{p}.proj.bias", layer.out_bias),
            _same(f"{p}.norm.weight", layer.ln_gamma), _same(f"{p}.norm.bias", layer.ln_beta),
            _linear(f"{p}.mlp.fc1.weight", layer.mlp1_kernel),
            _same(f"{p}.mlp.fc1.bias", layer.mlp1_bias),
            _linear(f"{p}.mlp.fc2.weight", layer.mlp2_kernel),
            _same(f"{p}.mlp.fc2.bias", layer.mlp2_bias)]


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
        _same(f"{p}.mlp.fc2.bias", layer.mlp2_bias)] + (
        [_same(f"{p}.ls1.gamma", layer.ls1_gamma), _same(f"{p}.ls2.gamma", layer.ls2_gamma)]
        if layer.ls1_gamma is not None else [])


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


def _projection_entries(layer) -> List[Entry]:
    """CLIP's bias-free image-text projection, which timm keeps as ``head`` with a zero bias
    (its conversion of CLIP's ``proj``): the weight, the bias checked zero."""
    units, width = _shape(layer.kernel)[::-1]

    def kernel(arrays):
        if np.any(arrays[1]):
            raise CheckpointError("head.bias is not zero: the head is a classifier, not "
                                  "CLIP's bias-free projection; build without projection_dim")
        return arrays[0].T

    return [Entry(["head.weight", "head.bias"], layer.kernel, [(units, width), (units,)],
                  kernel)]


def timm_entries(model: keras.Model) -> List[Entry]:
    """The timm key map (``timm.models.vision_transformer.VisionTransformer``, hybrids with
    the ``ResNetV2`` backbone of ``vision_transformer_hybrid``)."""
    return walk(model, {
        "patches": lambda layer: [_conv("patch_embed.proj.weight", layer.kernel)] + (
            [_same("patch_embed.proj.bias", layer.bias)] if layer.use_bias else []),
        "pre_norm": lambda layer: _torch_norm("norm_pre", layer),
        "fc_norm": lambda layer: _torch_norm("fc_norm", layer),
        "attn_pool": _attention_pool_entries,
        "head_dist": lambda layer: [_linear("head_dist.weight", layer.kernel, "head"),
                                    _same("head_dist.bias", layer.bias, "head")],
        "position": _position_entries,
        "block": _block_entries,
        "encoder_norm": lambda layer: _torch_norm("norm", layer),
        # timm < 0.9: Sequential(fc=Linear(D, R), act=Tanh)
        "pre_logits": lambda layer: [_linear("pre_logits.fc.weight", layer.kernel),
                                     _same("pre_logits.fc.bias", layer.bias)],
        "head": lambda layer: [_linear("head.weight", layer.kernel, "head"),
                               _same("head.bias", layer.bias, "head")],
        "projection": _projection_entries,
        "conv_root": lambda layer: [_conv(f"{_BACKBONE}.stem.conv.weight", layer.kernel)],
        "gn_root": lambda layer: _torch_norm(f"{_BACKBONE}.stem.norm", layer),
        "unit": _unit_entries,
    })


# "head" (not "head."): DeiT distilled's second head ``head_dist`` is a head too.
TIMM = KeyMap("timm", timm_entries, "cls_token", "head", "pre_logits.", hints={
    "fc_norm.": "timm's fc_norm (LayerNorm after the pooling): build with fc_norm=True "
                "(keras_vit.from_timm reads it from the file)",
    "reg_token": "register tokens: build with num_register_tokens",
    "norm_pre.": "a LayerNorm before the blocks (CLIP): build with pre_norm=True",
    "attn_pool.": "attention pooling (MAP, SigLIP): build with classifier='map'",
    "dist_token": "DeiT's distillation token: build with classifier='distilled'"})


# ---- What a timm file's tensors do not say, read from its hub config.json. ----

# timm ``act_layer`` names -> keras_vit's GELU variants.
TIMM_ACTIVATIONS = {"gelu": "erf", "quick_gelu": "quick", "gelu_tanh": "tanh"}
# timm 1.0's ViT architectures built with ``act_layer="gelu_tanh"`` (SigLIP towers; the
# ``*_quickgelu_*`` CLIP towers use QuickGELU; every other ViT exact GELU).
_GELU_TANH_ARCHITECTURES = frozenset({
    "vit_base_patch32_siglip_256", "vit_base_patch32_siglip_gap_256",
    "vit_giantopt_patch16_siglip_256", "vit_giantopt_patch16_siglip_384",
    "vit_giantopt_patch16_siglip_gap_256", "vit_giantopt_patch16_siglip_gap_384",
    "vit_large_patch16_siglip_512", "vit_large_patch16_siglip_gap_512",
    "vit_so400m_patch16_siglip_256", "vit_so400m_patch16_siglip_384",
    "vit_so400m_patch16_siglip_512", "vit_so400m_patch16_siglip_gap_256",
    "vit_so400m_patch16_siglip_gap_384", "vit_so400m_patch16_siglip_gap_512"})


def timm_architecture_name(config) -> str:
    """The timm architecture of a hub ``config.json`` (``"architecture"``, without the
    ``.tag``), "" when absent."""
    name = (config or {}).get("architecture") or ""
    return name.split(".", 1)[0] if isinstance(name, str) else ""


def timm_model_args(config) -> dict:
    """The ``model_args`` of a timm hub ``config.json`` ({} when absent)."""
    args = (config or {}).get("model_args") or {}
    return args if isinstance(args, dict) else {}


def timm_config_numerics(config, path: str = "config.json") -> dict:
    """The GELU variant and LayerNorm epsilon a timm hub ``config.json`` implies
    (``model_args["act_layer"]``, else the architecture name: ``*_quickgelu_*`` QuickGELU,
    the SigLIP towers of :data:`_GELU_TANH_ARCHITECTURES` tanh GELU; CLIP towers
    ``*_clip_*`` LayerNorm epsilon 1e-5, as timm builds them); {} without a config.

    OpenAI's CLIP weights are published once, under the GELU architecture name
    (``timm/vit_base_patch16_clip_224.openai``) with the ``pretrained_cfg`` note "natively
    QuickGELU, use quickgelu model variant for original results": such a note gives
    QuickGELU (what timm's ``*_quickgelu_*`` variant of the same file computes)."""
    if not config:
        return {}
    name, act = timm_architecture_name(config), timm_model_args(config).get("act_layer")
    if act is not None and act not in TIMM_ACTIVATIONS:
        raise CheckpointError(f"{path}: act_layer {act!r} is not an activation keras_vit "
                              f"computes (known: {', '.join(sorted(TIMM_ACTIVATIONS))})")
    notes = ((config.get("pretrained_cfg") or {}) if isinstance(
        config.get("pretrained_cfg"), dict) else {}).get("notes") or ()
    native_quick = any("quickgelu" in str(note).lower() for note in notes)
    gelu = TIMM_ACTIVATIONS[act] if act else (
        "quick" if "quickgelu" in name or native_quick else
        "tanh" if name in _GELU_TANH_ARCHITECTURES else "erf")
    return {"gelu": gelu, "layer_norm_epsilon": 1e-5 if "_clip_" in name else 1e-6}
