"""``keras-vit explain`` (attention rollout on an image) and ``keras-vit inspect`` (the
paper's Figure 7 panels), plus the per-class report of ``keras-vit evaluate``."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional, Sequence

if TYPE_CHECKING:  # numpy loads on first use: the CLI's parser imports this module
    import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MODEL_HELP = ("run directory, .keras file or original .npz checkpoint")


def add_commands(sub) -> None:
    """Registers ``explain`` and ``inspect`` on the CLI's subparsers."""
    explain = sub.add_parser("explain", help="attention rollout of an image, with the top-k")
    explain.add_argument("model", help=MODEL_HELP)
    explain.add_argument("image", help="image file (JPEG, PNG, BMP, GIF)")
    explain.add_argument("--output", required=True, help="the PNG to write")
    explain.add_argument("--top-k", type=int, default=5)
    explain.add_argument("--model", dest="architecture",
                         help="architecture of an .npz MODEL (default: read from it)")
    explain.set_defaults(run=run_explain, check=check_explain)
    inspect = sub.add_parser("inspect", help="embedding filters, position-embedding "
                             "similarity, mean attention distance (paper Figure 7)")
    inspect.add_argument("model", help=MODEL_HELP)
    inspect.add_argument("--output", required=True, help="directory for the PNGs")
    inspect.add_argument("--images", help="directory of images for the attention distances "
                                          "(default: built-in samples)")
    inspect.add_argument("--image-size", type=int, nargs="+",
                         help="one int or HEIGHT WIDTH (default: the model's); position "
                              "embeddings and attention at that resolution")
    inspect.add_argument("--model", dest="architecture",
                         help="architecture of an .npz MODEL (default: read from it)")
    inspect.set_defaults(run=run_inspect, check=check_inspect)


def check_png_output(path: str) -> str:
    """``path`` if it is a .png in an existing directory, else a ValueError naming it."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"output must be a .png file, got {path}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: directory {directory} does not exist")
    return path


def check_explain(args) -> None:
    """``explain``'s arguments, checked without TensorFlow (a ValueError naming the problem)."""
    from export.model_sources import model_kind, read_image_files

    check_png_output(args.output)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    model_kind(args.model)
    read_image_files([args.image])


def check_inspect(args) -> None:
    """``inspect``'s model, checked without TensorFlow (a ValueError naming it)."""
    from export.model_sources import model_kind

    model_kind(args.model)


def run_explain(args) -> int:
    import numpy as np

    from export.model_sources import load_keras_model, load_pixels, read_image_files
    from keras_vit import inspection
    from training.figures import explain_figure

    check_explain(args)
    output = args.output
    model, labels = load_keras_model(args.model, args.architecture)
    pixels = load_pixels(model, args.image, read_image_files([args.image])[0])
    result = inspection.explain(model, pixels[None])
    probabilities = result.get("probabilities")
    if probabilities is None:
        raise ValueError(f"{args.model} has no classification head (include_top=False)")
    order = np.argsort(-probabilities[0], kind="stable")[:args.top_k]
    names = [labels[i] if labels and i < len(labels) else str(int(i)) for i in order]
    prefix = inspection.num_prefix_tokens(model)
    method = "attention rollout" + ("" if prefix else " (mean over tokens: gap model)")
    explain_figure(output, pixels, result["rollout"][0], names, probabilities[0][order],
                   title=f"{os.path.basename(args.image)}: {model.name}", method=method)
    print(f"wrote {output}: {names[0]} ({probabilities[0][order[0]]:.3f})")
    return 0


def builtin_sample_images() -> List[np.ndarray]:
    """The default images of ``inspect``: scikit-learn's two bundled photographs and four of
    its bundled handwritten digits (offline, no download)."""
    import numpy as np
    from sklearn.datasets import load_digits, load_sample_images

    photos = list(load_sample_images().images)
    digits = load_digits()
    picks = [np.repeat(np.round(digits.images[i] * (255.0 / 16.0))[..., None], 3, axis=-1)
             for i in range(4)]
    return photos + [p.astype(np.uint8) for p in picks]


def _images_from(directory: str) -> List[bytes]:
    from export.model_sources import read_image_files

    if not os.path.isdir(directory):
        raise ValueError(f"--images {directory} is not a directory")
    paths = sorted(os.path.join(directory, f) for f in os.listdir(directory)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not paths:
        raise ValueError(f"--images {directory} has no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return list(zip(paths, read_image_files(paths)))


def inspection_images(directory: Optional[str], image_size) -> np.ndarray:
    """(n, h, w, 3) pixels: the images of ``directory`` (or the built-in samples) through
    the project's one preprocessing function, at ``image_size``."""
    import numpy as np
    import tensorflow as tf

    import keras_vit
    from export.model_sources import preprocess_file

    if directory is None:
        return np.stack([keras_vit.preprocess_image(tf.constant(image), image_size).numpy()
                         for image in builtin_sample_images()])
    return np.stack([preprocess_file(path, data, image_size)
                     for path, data in _images_from(directory)])


def run_inspect(args) -> int:
    import numpy as np

    import keras_vit
    from export.model_sources import load_keras_model
    from keras_vit import inspection
    from training import figures

    model, _ = load_keras_model(args.model, args.architecture)
    size = keras_vit.model_image_size(model)
    if args.image_size:
        size = tuple(args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
        inspection.token_grid(model, size)  # refuses sizes the model cannot take
        inspection.attention_bytes_per_image(model, size)  # and ones whose maps are too big
    images = inspection_images(args.images, size)
    os.makedirs(args.output, exist_ok=True)
    written = []
    name = model.name
    try:
        components, explained = inspection.patch_embedding_components(model)
        written.append(figures.embedding_filters_figure(
            os.path.join(args.output, "embedding_filters.png"), components, explained,
            title=f"{name}: RGB embedding filters (top principal components)"))
    except ValueError as error:  # hybrids: no RGB filters
        print(f"embedding_filters.png skipped: {error}")
    similarity = inspection.position_embedding_similarity(model, size)
    written.append(figures.position_similarity_figure(
        os.path.join(args.output, "position_similarity.png"), similarity,
        title=f"{name}: position embedding similarity at {size[0]}x{size[1]}"))
    distances = inspection.mean_attention_distances(model, images)
    written.append(figures.attention_distance_figure(
        os.path.join(args.output, "attention_distance.png"), distances,
        max_distance=float(np.hypot(*size)),
        uniform_distance=_uniform_distance(model, size),
        title=f"{name}: mean attention distance ({len(images)} images, {size[0]}x{size[1]})"))
    for path in written:
        print(f"wrote {path}")
    return 0


def _uniform_distance(model, size) -> float:
    """Mean attention distance of attention spread evenly over the patches."""
    import numpy as np

    from keras_vit import inspection

    grid = inspection.token_grid(model, size)
    tokens = grid[0] * grid[1]
    uniform = np.full((1, 1, tokens, tokens), 1.0 / tokens)
    return float(inspection.mean_attention_distance(uniform, grid, 0,
                                                    inspection.pixels_per_token(model))[0])


def per_class_accuracy(model, dataset, num_classes: int):
    """``(accuracy per class, confusion matrix)`` over a batched (images, labels) dataset;
    a class without examples has accuracy NaN."""
    import numpy as np

    matrix = np.zeros((num_classes, num_classes), np.int64)
    for images, labels in dataset:
        predicted = np.argmax(np.asarray(model(images, training=False)), axis=-1)
        np.add.at(matrix, (np.asarray(labels).astype(np.int64), predicted), 1)
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(totals > 0, np.diag(matrix) / totals, np.nan)
    return accuracy, matrix


def report_per_class(model, dataset, labels: Sequence[str], confusion: Optional[str]) -> None:
    """Prints per-class accuracy and, with ``confusion``, writes the confusion-matrix PNG."""
    import numpy as np

    if confusion:
        check_png_output(confusion)
    accuracy, matrix = per_class_accuracy(model, dataset, len(labels))
    print("per-class accuracy:")
    for name, acc, total in zip(labels, accuracy, matrix.sum(axis=1)):
        print(f"  {name}: {'n/a' if np.isnan(acc) else f'{acc:.4f}'} ({int(total)} examples)")
    if confusion:
        from training.figures import confusion_figure
        confusion_figure(confusion, matrix, labels, title=f"Confusion matrix: {model.name} "
                         f"({int(matrix.sum())} test examples)")
        print(f"wrote {confusion}")
