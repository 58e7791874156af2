"""Position-embedding resizing with the original semantics (paper section 3.2).

The original release resamples the grid of a checkpoint's position embeddings with
``scipy.ndimage.zoom(grid, zoom, order=1)``: bilinear with *aligned corners* (corner values
kept). The same TensorFlow op serves checkpoint loading (numpy in, numpy out) and the
model's runtime interpolation inside the graph, so a model built at 224 and called at 384
gives exactly the outputs of a 384 model loaded from the same weights.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

Grid = Union[int, Sequence[int]]


def to_pair(value: Grid, what: str = "size") -> Tuple[int, int]:
    """An int or a (height, width) pair, as a tuple of two positive ints."""
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        pair = tuple(int(v) for v in value)
        if len(pair) != 2:
            raise ValueError(f"{what} must be an int or (height, width), got {value!r}")
    if min(pair) < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return pair


def resize_grid(grid: tf.Tensor, size) -> tf.Tensor:
    """Bilinear resize of a (1, h, w, D) grid to ``size`` with aligned corners.

    ``size`` may be a tensor known only at run time. The result has the input's dtype.
    """
    resized = tf.raw_ops.ResizeBilinear(
        images=grid, size=tf.cast(size, tf.int32), align_corners=True,
        half_pixel_centers=False)
    return tf.cast(resized, grid.dtype)


def resize_position_embeddings(posemb: np.ndarray, new_grid: Grid, num_prefix_tokens: int = 1,
                               old_grid: Optional[Grid] = None) -> np.ndarray:
    """Resize position embeddings of shape (1, prefix + h*w, D) to a new (h', w') grid.

    The ``num_prefix_tokens`` leading embeddings (the class token's) are kept unchanged; the
    rest is reshaped to its 2-D grid (``old_grid``, inferred as square when not given),
    resized bilinearly with aligned corners and flattened row-major again.

    Args:
        posemb: numpy array of shape (1, prefix + h*w, D).
        new_grid: int or (height, width) of the new grid.
        num_prefix_tokens: leading embeddings that are not on the grid (1: class token).
        old_grid: (h, w) of the current grid; inferred as square when None.

    Returns:
        A numpy array of shape (1, prefix + h'*w', D) and ``posemb``'s dtype.
    """
    posemb = np.asarray(posemb)
    if posemb.ndim != 3 or posemb.shape[0] != 1:
        raise ValueError(f"position embeddings must have shape (1, N, D), got {posemb.shape}")
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(
                f"cannot infer the grid of {n} position embeddings (not a square number); "
                "pass old_grid=(height, width)")
        old_grid = (side, side)
    old_grid = to_pair(old_grid, "old_grid")
    new_grid = to_pair(new_grid, "new_grid")
    if old_grid[0] * old_grid[1] != n:
        raise ValueError(f"old_grid {old_grid} does not hold the {n} position embeddings")
    if old_grid == new_grid:
        return posemb.copy()
    resized = resize_grid(tf.constant(grid.reshape(1, old_grid[0], old_grid[1], dim),
                                      dtype=tf.float32), new_grid).numpy()
    resized = resized.reshape(1, new_grid[0] * new_grid[1], dim).astype(posemb.dtype)
    return np.concatenate([prefix, resized], axis=1)


def sincos_2d_position_embeddings(grid_h, grid_w, width: int, temperature: float = 10_000.0,
                                  dtype=tf.float32) -> tf.Tensor:
    """Fixed 2-D sine-cosine position embeddings, (1, grid_h * grid_w, width), row-major.

    As big_vision's ``posemb_sincos_2d`` (the plain-ViT baselines, arXiv 2205.01580): a
    quarter of the channels each for sin(x), cos(x), sin(y), cos(y), x the column and y the
    row, at frequencies ``temperature ** -(i / (width / 4 - 1))``. Nothing is learned: any
    grid (``grid_h``, ``grid_w`` may be tensors known only at run time) gets its own.
    """
    if width % 4:
        raise ValueError(f"sin-cos 2-D position embeddings need a width divisible by 4, "
                         f"got {width}")
    quarter = width // 4
    omega = tf.range(quarter, dtype=tf.float32) / max(quarter - 1, 1)
    omega = 1.0 / (temperature ** omega)
    rows, cols = tf.meshgrid(tf.range(grid_h), tf.range(grid_w), indexing="ij")
    y = tf.cast(tf.reshape(rows, [-1]), tf.float32)[:, None] * omega[None]
    x = tf.cast(tf.reshape(cols, [-1]), tf.float32)[:, None] * omega[None]
    table = tf.concat([tf.sin(x), tf.cos(x), tf.sin(y), tf.cos(y)], axis=1)
    return tf.cast(table[None], dtype)
