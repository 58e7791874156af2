"""What every checkpoint must be before it loads: within :data:`ARCHITECTURE_BOUNDS` (checked
from the headers), floating-point, and finite once cast to the model's floats."""
from __future__ import annotations

from typing import Dict

import numpy as np

from keras_vit.checkpoints.readers import ArrayInfo
from keras_vit.errors import CheckpointError


# What a ViT can be: the most a checkpoint may declare, checked from its headers before any
# model is built or any array is read, so that a corrupt or hostile file (a stray key, a
# header claiming a huge grid, a deflate bomb) is refused before it costs memory. The largest
# published ViTs are well inside: ViT-22B is 6144 wide and 48 blocks deep with a 24576-wide
# MLP; position grids reach 64 x 64 (1024 px at patch 16); BiT's widest ResNet is R152x4.
ARCHITECTURE_BOUNDS = {
    "width": 8192, "MLP width": 65536, "depth": 256, "patch size": 128, "channels": 1024,
    "position grid side": 256, "classes": 1 << 20, "ResNet stages": 8,
    "ResNet units per stage": 64, "ResNet width": 16,
}


def check_dtypes(index: Dict[str, ArrayInfo], path: str) -> None:
    """Weights are floating-point arrays: strings, complex, bool, void and integer arrays
    (an integer tensor where a float weight belongs is a broken or foreign file) are not."""
    bad = [f"{key!r} ({info.dtype})" for key, info in sorted(index.items())
           if info.dtype.kind != "f"]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} array(s) are not floating-point (weights "
                              f"are float16, float32 or float64); no weight was changed: "
                              f"{', '.join(bad)}")


def check_bounds(path: str, values: Dict[str, int]) -> None:
    """Raises for a value read from a checkpoint (``{what: value}``, ``what`` a key of
    :data:`ARCHITECTURE_BOUNDS`) that no ViT has."""
    for what, value in values.items():
        bound = ARCHITECTURE_BOUNDS[what]
        if not 1 <= value <= bound:
            raise CheckpointError(
                f"{path}: {what} {value} is not what a ViT can be (1 to {bound:,}, "
                "keras_vit.checkpoints.ARCHITECTURE_BOUNDS): a corrupt or hostile file?")


def check_position_grid(path: str, key: str, tokens: int, prefix: int) -> None:
    """Raises for position embeddings of more grid tokens than the bound's square grid
    (checked from the header, before they are read or a model is built for them)."""
    side = ARCHITECTURE_BOUNDS["position grid side"]
    if tokens - prefix > side * side:
        raise CheckpointError(
            f"{path}: {key!r} declares {tokens - prefix:,} grid tokens, more than a ViT can "
            f"have (a grid of at most {side} x {side}, keras_vit.checkpoints."
            "ARCHITECTURE_BOUNDS): a corrupt or hostile file?")


def check_finite(path: str, named_arrays, what: str = "array(s)", detail: str = "",
                 consequence: str = "no weight was changed") -> None:
    """The finiteness promise of every loader: raises naming each ``(name, array)`` that
    holds NaN or infinite values."""
    bad = sorted(name for name, array in named_arrays if not np.isfinite(array).all())
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} {what} hold NaN or infinite values{detail}; "
                              f"{consequence}: {', '.join(map(repr, bad))}")

