"""``keras-vit predict`` (also ``python -m export predict``): classify images with any
model: a run directory, ``.keras``, ``.npz``, an exported version or a TF Serving server. A
headless tower (no head: an embedding out) prints each image's embedding width and L2 norm
(``--json``: the values too)."""
from __future__ import annotations

from export.model_sources import (KINDS, format_predictions, model_kind, predict,
                                  read_image_files)

NAME = "predict"
HELP = "classify images with any model (a headless tower: embed them)"


def add_arguments(parser):
    parser.add_argument("images", nargs="+", metavar="[MODEL] IMAGE",
                        help="MODEL (run directory, .keras, .npz, exported version directory "
                             "or server URL; omitted with --server / --model-dir), then image "
                             "files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--model", dest="architecture", help="architecture of an .npz MODEL "
                        "(e.g. ViT_B16; default: read from the checkpoint)")
    where = parser.add_mutually_exclusive_group(required=False)
    where.add_argument("--server", help="TF Serving REST URL (http://host:8501) or gRPC "
                                        "address (grpc://host:8500)")
    where.add_argument("--model-dir", help="an exported version directory, run locally")
    parser.add_argument("--name", default="vit", help="served model name (with --server)")


def check(args):
    """``(MODEL, image paths)`` of ``predict MODEL IMAGE...`` (or the older ``--model-dir`` /
    ``--server`` forms), checked without TensorFlow: a ValueError names a missing model, an
    image file that cannot be read, or a bad ``--top-k``."""
    spec = args.server or args.model_dir
    paths = list(args.images)
    if spec is None:
        if len(paths) < 2:
            raise ValueError("usage: predict MODEL IMAGE... (MODEL: " + KINDS + ")")
        spec, paths = paths[0], paths[1:]
    if args.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    model_kind(spec)
    read_image_files(paths)
    return spec, paths


def run(args) -> int:
    """``predict MODEL IMAGE...`` (or the older ``--model-dir`` / ``--server`` forms)."""
    spec, paths = check(args)
    rows = predict(spec, paths, top_k=args.top_k, architecture=args.architecture,
                   server_model=args.name)
    print(format_predictions(rows, args.json))
    return 0
