"""``keras-vit inspect``: the paper's Figure 7 panels of a model (RGB embedding filters,
position-embedding similarity, mean attention distance) as PNGs."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, List, Optional

from training.commands.explain import MODEL_HELP

if TYPE_CHECKING:  # numpy loads on first use: the CLI's parser imports this module
    import numpy as np

NAME = "inspect"
HELP = "embedding filters, position-embedding similarity, mean attention distance (paper Figure 7)"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def add_arguments(parser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--output", required=True, help="directory for the PNGs")
    parser.add_argument("--images", help="directory of images for the attention distances "
                                         "(default: built-in samples)")
    parser.add_argument("--image-size", type=int, nargs="+",
                        help="one int or HEIGHT WIDTH (default: the model's); position "
                             "embeddings and attention at that resolution")
    parser.add_argument("--model", dest="architecture",
                        help="architecture of an .npz MODEL (default: read from it)")


def check(args) -> None:
    """``inspect``'s model, checked without TensorFlow (a ValueError naming it)."""
    from export.model_sources import model_kind

    model_kind(args.model)


def run(args) -> int:
    import numpy as np

    import keras_vit
    from export.model_sources import load_keras_model
    from keras_vit import inspection
    from keras_vit.preprocessing import model_interpolation
    from training import figures

    model, _ = load_keras_model(args.model, args.architecture)
    size = keras_vit.model_image_size(model)
    if args.image_size:
        size = tuple(args.image_size * 2 if len(args.image_size) == 1 else args.image_size)
        inspection.token_grid(model, size)  # refuses sizes the model cannot take
        inspection.attention_bytes_per_image(model, size)  # and ones whose maps are too big
    images = inspection_images(args.images, size, model_interpolation(model))
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


def inspection_images(directory: Optional[str], image_size,
                      interpolation: str = "bilinear") -> np.ndarray:
    """(n, h, w, 3) pixels: the images of ``directory`` (or the built-in samples) through
    the project's one preprocessing function, at ``image_size``, resized with
    ``interpolation`` (the model's)."""
    import numpy as np
    import tensorflow as tf

    import keras_vit
    from export.model_sources import preprocess_file

    if directory is None:
        return np.stack([keras_vit.preprocess_image(tf.constant(image), image_size,
                                                    interpolation=interpolation).numpy()
                         for image in builtin_sample_images()])
    return np.stack([preprocess_file(path, data, image_size, interpolation)
                     for path, data in _images_from(directory)])
