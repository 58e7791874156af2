"""The figures of ``keras-vit explain``, ``inspect``, ``evaluate --confusion`` and the
training curves, drawn with matplotlib on its headless Agg backend. Each function takes
numbers (from :mod:`keras_vit.inspection` or the evaluation) and writes one PNG of a fixed
size: ``FIGURE_SIZES[name]`` inches at :data:`DPI`.
"""
from __future__ import annotations

import io
import os
from typing import Dict, Optional, Sequence

import numpy as np

DPI = 100
FIGURE_SIZES = {"explain": (10.0, 3.6), "filters": (8.0, 5.2), "similarity": (7.0, 6.0),
                "distance": (6.0, 4.5), "confusion": (6.5, 5.5), "curves": (10.0, 3.6)}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed, never opens a window
    import matplotlib.pyplot as plt
    return plt


def _figure(name: str):
    return _pyplot().figure(figsize=FIGURE_SIZES[name], dpi=DPI)


def _save(figure, path: str) -> str:
    """Writes the PNG through tf.io.gfile when ``path`` is on another filesystem (a run
    directory may be on ``gs://``)."""
    if "://" in path:
        import tensorflow as tf
        buffer = io.BytesIO()
        figure.savefig(buffer, dpi=DPI, format="png")
        _pyplot().close(figure)
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(buffer.getvalue())
        return path
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: directory {directory} does not exist")
    figure.savefig(path, dpi=DPI, format="png")
    _pyplot().close(figure)
    return path


def _colorbar_beside(figure, ax, image, label: str) -> None:
    """A colour bar as tall as ``ax`` (also for wide, non-square grids)."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable
    bar = make_axes_locatable(ax).append_axes("right", size="4%", pad=0.1)
    figure.colorbar(image, cax=bar, label=label)


def _as_display_image(image: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(image, np.float64) / 255.0, 0.0, 1.0)


def explain_figure(path: str, image: np.ndarray, heat: np.ndarray, labels: Sequence[str],
                   probabilities: Sequence[float], title: str = "",
                   method: str = "attention rollout") -> str:
    """Image | rollout overlaid on the image (with a colour bar) | top-k probabilities.

    Args:
        path: the PNG to write.
        image: (H, W, 3) pixels in [0, 255], as the model saw them.
        heat: (rows, cols) map in [0, 1] over the patch grid.
        labels, probabilities: the top-k classes, most likely first.
        title: the figure's title (e.g. the file name).
        method: what ``heat`` is, for the panel title.
    """
    figure = _figure("explain")
    shown = _as_display_image(image)
    height, width = shown.shape[:2]
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1.2, 1.3]})
    axes[0].imshow(shown, interpolation="nearest")
    axes[0].set_title(f"input ({height}x{width})")
    axes[1].imshow(shown, interpolation="nearest")
    overlay = axes[1].imshow(heat, cmap="inferno", alpha=0.6, vmin=0.0, vmax=1.0,
                             extent=(-0.5, width - 0.5, height - 0.5, -0.5),
                             interpolation="bilinear")
    axes[1].set_title(method)
    _colorbar_beside(figure, axes[1], overlay, "relative attention")
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    order = np.arange(len(labels))[::-1]
    axes[2].barh(order, list(probabilities), color="tab:blue")
    axes[2].set_yticks(order, [str(name)[:24] for name in labels])
    axes[2].set_xlim(0.0, 1.0)
    axes[2].set_xlabel("probability")
    axes[2].set_title(f"top-{len(labels)} classes")
    for y, p in zip(order, probabilities):
        axes[2].text(min(p + 0.02, 0.8), y, f"{p:.3f}", va="center", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def _normalise_tile(tile: np.ndarray) -> np.ndarray:
    low, high = tile.min(), tile.max()
    return (tile - low) / (high - low) if high > low else np.zeros_like(tile)


def embedding_filters_figure(path: str, components: np.ndarray, explained: np.ndarray,
                             title: str = "") -> str:
    """The principal components of the patch-embedding filters as RGB tiles (paper
    Figure 7, left), each scaled to [0, 1] on its own, with its share of the variance."""
    figure = _figure("filters")
    count = len(components)
    cols = min(7, count)
    rows = -(-count // cols)
    axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        tile = components[i]
        ax.imshow(_normalise_tile(tile) if tile.shape[-1] == 3
                  else _normalise_tile(tile.mean(-1)), cmap="gray", interpolation="nearest")
        ax.set_title(f"PC{i + 1} {100 * explained[i]:.1f}%", fontsize=7)
    figure.suptitle(title or "RGB embedding filters: principal components")
    figure.tight_layout()
    return _save(figure, path)


def _mosaic(similarity: np.ndarray) -> np.ndarray:
    """(rows, cols, rows, cols) -> one image of rows x cols small maps, NaN-separated."""
    rows, cols = similarity.shape[:2]
    mosaic = np.full((rows * (rows + 1) - 1, cols * (cols + 1) - 1), np.nan)
    for i in range(rows):
        for j in range(cols):
            mosaic[i * (rows + 1):i * (rows + 1) + rows,
                   j * (cols + 1):j * (cols + 1) + cols] = similarity[i, j]
    return mosaic


def position_similarity_figure(path: str, similarity: np.ndarray, title: str = "") -> str:
    """Cosine similarity of each patch's position embedding with all others (paper Figure 7,
    centre): the small map at (row i, column j) is patch (i, j)'s similarities."""
    plt = _pyplot()
    figure = _figure("similarity")
    rows, cols = similarity.shape[:2]
    ax = figure.add_subplot(1, 1, 1)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = ax.imshow(_mosaic(similarity), cmap=cmap, vmin=-1.0, vmax=1.0,
                      interpolation="nearest")
    ax.set_xticks([j * (cols + 1) + (cols - 1) / 2 for j in range(cols)],
                  [str(j + 1) for j in range(cols)], fontsize=7)
    ax.set_yticks([i * (rows + 1) + (rows - 1) / 2 for i in range(rows)],
                  [str(i + 1) for i in range(rows)], fontsize=7)
    ax.set_xlabel("input patch column")
    ax.set_ylabel("input patch row")
    ax.tick_params(length=0)
    _colorbar_beside(figure, ax, image, "cosine similarity")
    ax.set_title(title or f"Position embedding similarity ({rows}x{cols} grid)")
    figure.tight_layout()
    return _save(figure, path)


def attention_distance_figure(path: str, distances: np.ndarray, max_distance: float,
                              uniform_distance: Optional[float] = None,
                              title: str = "") -> str:
    """Mean attention distance of every head against depth (paper Figure 7, right).

    Args:
        distances: (blocks, heads) in pixels.
        max_distance: the largest possible distance (the image diagonal), the y-axis limit.
        uniform_distance: the distance of uniform attention over the grid, drawn as a
            dashed reference line (heads below it attend locally).
    """
    plt = _pyplot()
    figure = _figure("distance")
    ax = figure.add_subplot(1, 1, 1)
    blocks, heads = distances.shape
    colours = plt.get_cmap("tab20" if heads > 10 else "tab10")
    for h in range(heads):
        ax.scatter(np.arange(1, blocks + 1), distances[:, h], s=14, color=colours(h % 20),
                   label=f"head {h + 1}")
    if uniform_distance is not None:
        ax.axhline(uniform_distance, color="gray", linestyle="--", linewidth=1,
                   label="uniform attention")
    ax.set_xlim(0.5, blocks + 0.5)
    ax.set_ylim(0.0, max_distance)
    ax.set_xticks(range(1, blocks + 1))
    ax.set_xlabel("network depth (block)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.grid(alpha=0.3)
    if heads <= 16:
        ax.legend(fontsize=6, ncol=2, loc="upper left")
    ax.set_title(title or "Mean attention distance per head")
    figure.tight_layout()
    return _save(figure, path)


def confusion_figure(path: str, matrix: np.ndarray, labels: Sequence[str],
                     title: str = "") -> str:
    """Confusion matrix (rows: true class, columns: predicted), coloured by the fraction of
    each true class, with counts written in the cells for up to 20 classes."""
    figure = _figure("confusion")
    ax = figure.add_subplot(1, 1, 1)
    matrix = np.asarray(matrix)
    fractions = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    count = len(labels)
    if count <= 50:
        names = [str(name)[:12] for name in labels]
        ax.set_xticks(range(count), names, rotation=90 if count > 10 else 0, fontsize=7)
        ax.set_yticks(range(count), names, fontsize=7)
    if count <= 20:
        for i in range(count):
            for j in range(count):
                if matrix[i, j]:
                    ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    _colorbar_beside(figure, ax, image, "fraction of the true class")
    ax.set_title(title or "Confusion matrix")
    figure.tight_layout()
    return _save(figure, path)


def curves_figure(path: str, series: Dict[str, Sequence], title: str = "") -> str:
    """Training loss and accuracy against steps.

    Args:
        series: ``{"loss": (steps, values), "accuracy": (steps, values)}``; a missing or
            empty entry leaves its panel saying so.
    """
    figure = _figure("curves")
    axes = figure.subplots(1, 2)
    for ax, name in zip(axes, ("loss", "accuracy")):
        steps, values = series.get(name, ((), ()))
        if len(steps):
            ax.plot(steps, values, marker=".", color="tab:blue" if name == "loss" else
                    "tab:green")
        else:
            ax.text(0.5, 0.5, f"no {name} logged", ha="center", transform=ax.transAxes)
        if name == "accuracy":
            ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("step")
        ax.set_ylabel(f"training {name}")
        ax.grid(alpha=0.3)
        ax.set_title(f"training {name}")
    figure.suptitle(title or "Training curves")
    figure.tight_layout()
    return _save(figure, path)


def read_scalars(log_dir: str, names: Sequence[str] = ("loss", "accuracy"),
                 ) -> Dict[str, tuple]:
    """The scalars TensorBoard shows for ``log_dir``: ``{name: (steps, values)}``."""
    import tensorflow as tf

    found: Dict[str, Dict[int, float]] = {name: {} for name in names}
    files = sorted(f for f in (tf.io.gfile.listdir(log_dir) if tf.io.gfile.isdir(log_dir)
                               else []) if "tfevents" in f)
    for filename in files:
        for record in tf.data.TFRecordDataset(os.path.join(log_dir, filename)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag in found:
                    number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                              else float(value.simple_value))
                    found[value.tag][int(event.step)] = number
    return {name: (sorted(points), [points[s] for s in sorted(points)])
            for name, points in found.items()}


def write_training_curves(run_dir: Optional[str]) -> Optional[str]:
    """``RUN/curves.png`` from the run's TensorBoard logs (``RUN/logs/train``), the same
    numbers TensorBoard shows; None when the run logged nothing."""
    from export.run_layout import RunLayout
    if not run_dir:
        return None
    layout = RunLayout(run_dir)
    series = read_scalars(os.path.join(layout.logs, "train"))
    if not any(len(steps) for steps, _ in series.values()):
        return None
    name = os.path.basename(run_dir.rstrip("/")) or run_dir
    return curves_figure(layout.curves, series, title=f"Training curves: {name}")


def check_png_output(path: str) -> str:
    """``path`` if it is a .png in an existing directory, else a ValueError naming it."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"output must be a .png file, got {path}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: directory {directory} does not exist")
    return path
