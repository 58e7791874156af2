"""``keras-vit explain``: attention rollout of one image, with the model's top-k classes,
drawn as a PNG."""
from __future__ import annotations

import os

NAME = "explain"
HELP = "attention rollout of an image, with the top-k"
MODEL_HELP = "run directory, .keras file or original .npz checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("image", help="image file (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--model", dest="architecture",
                        help="architecture of an .npz MODEL (default: read from it)")


def check(args) -> None:
    """``explain``'s arguments, checked without TensorFlow (a ValueError naming the problem)."""
    from export.model_sources import model_kind, read_image_files
    from training.figures import check_png_output

    check_png_output(args.output)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    model_kind(args.model)
    read_image_files([args.image])


def run(args) -> int:
    import numpy as np

    from export.model_sources import load_keras_model, load_pixels, read_image_files
    from keras_vit import inspection
    from training.figures import explain_figure

    check(args)
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
