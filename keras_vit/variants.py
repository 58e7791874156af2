"""The variant table of the paper (Table 1 and the hybrids of section 4.1) as plain data.

Every named builder in :mod:`keras_vit.models` is one line reading this table.
"""
from __future__ import annotations

import dataclasses
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


def total_stride(config: ViTConfig) -> int:
    """Pixels per token along each axis: the patch size times the ResNet's downsampling."""
    if not config.resnet_stages:
        return config.patch_size
    # Stem: conv stride 2 + max-pool stride 2; every stage after the first halves again.
    return config.patch_size * 4 * 2 ** (len(config.resnet_stages) - 1)
