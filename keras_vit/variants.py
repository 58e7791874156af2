"""The variant table of the paper (Table 1 and the hybrids of section 4.1) as plain data.

Every named builder in :mod:`keras_vit.models` is one line reading this table.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Tuple


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture hyper-parameters of one ViT (or ResNet+ViT hybrid) variant.

    Args:
        patch_size: patch side (1 for the hybrids, which embed the ResNet's feature map).
        hidden_size: token width D.
        mlp_size: MLP hidden width.
        num_heads: attention heads.
        num_layers: Transformer blocks.
        resnet_stages: BiT ResNet v2 units per stage (hybrids), else None.
        resnet_width: ResNet width multiplier.
        checkpoint_name: file name stem in the original release ("ViT-B_16").
        num_register_tokens: register tokens after the class token (DINOv2 with registers).
        embed_prefix: the position embeddings have entries for the prefix tokens (False:
            timm's ``no_embed_class``, DeiT III and DINOv2 with registers).
        layer_scale: LayerScale on both residual branches of every block (DeiT III, DINOv2).
        pre_norm: a LayerNorm before the blocks (CLIP image towers).
        patch_bias: the patch embedding has a bias (False: CLIP image towers).
        fc_norm: the final LayerNorm after the pooling instead of before it (timm's
            average-pooled ViTs with ``fc_norm``).

    The last six are the differences of the ViT family (DeiT, DeiT III, CLIP, DINOv2,
    SigLIP image towers); their defaults are the original ViT.
    """

    patch_size: int
    hidden_size: int
    mlp_size: int
    num_heads: int
    num_layers: int
    # BiT ResNet v2 stage sizes for hybrids (None: plain ViT). The feature map is then
    # embedded with `patch_size` (1 for the paper's hybrids).
    resnet_stages: Optional[Tuple[int, ...]] = None
    resnet_width: int = 1
    # Name of the checkpoint files of the original release ("ViT-B_16", "R50+ViT-B_16").
    checkpoint_name: Optional[str] = None
    # The family's options (defaults: the original ViT).
    num_register_tokens: int = 0
    embed_prefix: bool = True
    layer_scale: bool = False
    pre_norm: bool = False
    patch_bias: bool = True
    fc_norm: bool = False


# Transformer sizes (paper Table 1).
_TI = dict(hidden_size=192, mlp_size=768, num_heads=3, num_layers=12)
_S = dict(hidden_size=384, mlp_size=1536, num_heads=6, num_layers=12)
_B = dict(hidden_size=768, mlp_size=3072, num_heads=12, num_layers=12)
_L = dict(hidden_size=1024, mlp_size=4096, num_heads=16, num_layers=24)
_H = dict(hidden_size=1280, mlp_size=5120, num_heads=16, num_layers=32)

VARIANTS = {
    "ViT_Ti16": ViTConfig(patch_size=16, **_TI, checkpoint_name="ViT-Ti_16"),
    "ViT_S16": ViTConfig(patch_size=16, **_S, checkpoint_name="ViT-S_16"),
    "ViT_S32": ViTConfig(patch_size=32, **_S, checkpoint_name="ViT-S_32"),
    "ViT_B16": ViTConfig(patch_size=16, **_B, checkpoint_name="ViT-B_16"),
    "ViT_B32": ViTConfig(patch_size=32, **_B, checkpoint_name="ViT-B_32"),
    "ViT_L16": ViTConfig(patch_size=16, **_L, checkpoint_name="ViT-L_16"),
    "ViT_L32": ViTConfig(patch_size=32, **_L, checkpoint_name="ViT-L_32"),
    "ViT_H14": ViTConfig(patch_size=14, **_H, checkpoint_name="ViT-H_14"),
    # Hybrids: BiT ResNet v2 backbone, its feature map embedded with patch size 1.
    "R26_ViT_S32": ViTConfig(patch_size=1, **_S, resnet_stages=(2, 2, 2, 2),
                             checkpoint_name="R26+ViT-S_32"),
    "R50_ViT_B16": ViTConfig(patch_size=1, **_B, resnet_stages=(3, 4, 9),
                             checkpoint_name="R50+ViT-B_16"),
    "R50_ViT_L32": ViTConfig(patch_size=1, **_L, resnet_stages=(3, 4, 6, 3),
                             checkpoint_name="R50+ViT-L_32"),
}


def resnet_stride(resnet_stages: Optional[Tuple[int, ...]]) -> int:
    """The BiT ResNet v2's downsampling along each axis (1 without a ResNet)."""
    if not resnet_stages:
        return 1
    # Stem: conv stride 2 + max-pool stride 2; every stage after the first halves again.
    return 4 * 2 ** (len(resnet_stages) - 1)


def total_stride(config: ViTConfig) -> int:
    """Pixels per token along each axis: the patch size times the ResNet's downsampling."""
    return config.patch_size * resnet_stride(config.resnet_stages)


def physical_memory() -> Optional[int]:
    """Bytes of memory of this machine (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def estimate_memory(config: ViTConfig, image_size, num_prefix_tokens: int = 1,
                    activation_bytes: int = 4) -> dict:
    """Lower bounds of the memory a model of ``config`` built for ``image_size`` needs.

    Args:
        config: the architecture.
        image_size: (height, width) in pixels, multiples of :func:`total_stride`.
        num_prefix_tokens: 1 with a class token, 0 without.
        activation_bytes: bytes of one activation (4: float32, 2: mixed precision).

    Returns:
        ``{"tokens": ..., "position_embedding": ..., "activations": ...}``: the tokens per
        image, the bytes of the float32 position embedding (allocated when the model is
        built), and of the activations one image needs at least in one forward pass (the
        largest single tensor: one layer's attention scores ``heads x tokens^2``, the MLP's
        hidden layer, the image or the ResNet stem's output, plus the token sequence twice).
    """
    height, width = (int(image_size), int(image_size)) if isinstance(image_size, int) \
        else (int(image_size[0]), int(image_size[1]))
    stride = total_stride(config)
    tokens = (height // stride) * (width // stride) + num_prefix_tokens
    stem = (height // 2) * (width // 2) * 64 * config.resnet_width \
        if config.resnet_stages else 0
    largest = max(config.num_heads * tokens ** 2, tokens * config.mlp_size,
                  height * width * 3, stem)
    return {"tokens": tokens, "position_embedding": tokens * config.hidden_size * 4,
            "activations": (largest + 2 * tokens * config.hidden_size) * activation_bytes}


def _size(num_bytes: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if num_bytes < 1000 or unit == "EB":
            return f"{num_bytes:,.0f} {unit}" if unit == "bytes" else f"{num_bytes:,.1f} {unit}"
        num_bytes /= 1000


def check_fits(config: ViTConfig, image_size, num_prefix_tokens: int = 1,
               activation_bytes: int = 4, memory: Optional[int] = None) -> None:
    """A ValueError, with the estimate (:func:`estimate_memory`), when a model of ``config``
    at ``image_size`` cannot fit in ``memory`` bytes (default: this machine's): called
    before anything is allocated (``--image-size 100000`` would otherwise fail allocating
    its position embedding, deep inside TensorFlow)."""
    memory = physical_memory() if memory is None else memory
    if memory is None:
        return
    need = estimate_memory(config, image_size, num_prefix_tokens, activation_bytes)
    if need["position_embedding"] + need["activations"] <= memory:
        return
    size = "x".join(str(int(s)) for s in ((image_size, image_size)
                                          if isinstance(image_size, int) else image_size))
    raise ValueError(f"image size {size} cannot fit: its {need['tokens']:,} tokens need at "
                     f"least {_size(need['position_embedding'])} for the position embedding "
                     f"and {_size(need['activations'])} of activations for one image "
                     f"(estimate), more than the {_size(memory)} of memory here; choose a "
                     "smaller image size")
