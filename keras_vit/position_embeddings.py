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
                               old_grid: Optional[Grid] = None,
                               method: str = "bilinear") -> np.ndarray:
    """Resize position embeddings of shape (1, prefix + h*w, D) to a new (h', w') grid.

    The ``num_prefix_tokens`` leading embeddings (the class token's) are kept unchanged; the
    rest is reshaped to its 2-D grid (``old_grid``, inferred as square when not given),
    resized bilinearly with aligned corners and flattened row-major again.

    Args:
        posemb: numpy array of shape (1, prefix + h*w, D).
        new_grid: int or (height, width) of the new grid.
        num_prefix_tokens: leading embeddings that are not on the grid (1: class token).
        old_grid: (h, w) of the current grid; inferred as square when None.
        method: one of :data:`RESIZE_METHODS` (``"torch_bicubic..."``: what transformers
            computes for the family's checkpoints, :func:`torch_bicubic_matrix`).

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
    if method not in RESIZE_METHODS:
        raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
    if method == "bilinear":
        resized = resize_grid(tf.constant(grid.reshape(1, old_grid[0], old_grid[1], dim),
                                          dtype=tf.float32), new_grid).numpy()
    else:
        rows, cols = (torch_bicubic_matrix(o, n, method.endswith("antialias"))
                      for o, n in zip(old_grid, new_grid))
        resized = np.einsum("ai,bj,ijd->abd", rows, cols,
                            grid.reshape(old_grid[0], old_grid[1], dim).astype(np.float64))
    resized = resized.reshape(1, new_grid[0] * new_grid[1], dim).astype(posemb.dtype)
    return np.concatenate([prefix, resized], axis=1)


# Load-time resize methods of :func:`resize_position_embeddings`: keras_vit's own (the
# original's aligned-corners bilinear), and PyTorch's bicubic (``align_corners=False``,
# without and with ``antialias``), what transformers' ``interpolate_pos_encoding`` uses.
RESIZE_METHODS = ("bilinear", "torch_bicubic", "torch_bicubic_antialias")


def _cubic(x: float, a: float) -> float:
    """The cubic convolution kernel (Keys) at distance ``x``."""
    x = abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    return ((x - 5) * x + 8) * x * a - 4 * a if x < 2 else 0.0


def torch_bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """The (n_out, n_in) matrix of PyTorch's 1-D bicubic resize (``align_corners=False``):
    source ``(i + 0.5) * n_in / n_out - 0.5``, kernel a = -0.75, edges clamped; with
    ``antialias`` (PIL's filter), a = -0.5, widened by the scale when downsampling and
    normalised."""
    scale, matrix = n_in / n_out, np.zeros((n_out, n_in))
    for i in range(n_out):
        if not antialias:
            source = (i + 0.5) * scale - 0.5
            first = math.floor(source)
            for j in range(first - 1, first + 3):
                matrix[i, min(max(j, 0), n_in - 1)] += _cubic(source - j, -0.75)
            continue
        support, inverse = (2.0 * scale, 1.0 / scale) if scale >= 1 else (2.0, 1.0)
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), n_in)
        weights = [_cubic((j - center + 0.5) * inverse, -0.5) for j in range(low, high)]
        matrix[i, low:high] = np.asarray(weights) / sum(weights)
    return matrix


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
