"""``keras-vit export`` and ``keras-vit predict`` (also ``python -m export``)."""
from __future__ import annotations

import argparse
import os
import sys


def add_export_arguments(parser):
    parser.add_argument("model", nargs="?", help="a .keras model or a training run directory")
    parser.add_argument("--output", default="models", help="base directory (default: models)")
    parser.add_argument("--name", default=None, help="model name (default: the model's)")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="export at another resolution (position embeddings resized)")
    parser.add_argument("--labels", default=None, help="labels file, one class name a line")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--frozen", action="store_true",
                        help="fast CPU serving graph: weights as constants, LayerNorm and "
                             "attention scale folded (see README, Performance)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="dtype the exported weights are stored and computed in")
    parser.add_argument("--verify", metavar="VERSION_DIR", default=None,
                        help="verify an exported version (with MODEL: compare outputs)")


def add_predict_arguments(parser):
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="TF Serving REST URL (http://host:8501) or gRPC "
                                        "address (grpc://host:8500)")
    where.add_argument("--model-dir", help="an exported version directory, run locally")
    parser.add_argument("--name", default="vit", help="served model name (with --server)")


def _resolve_model(path):
    """A .keras file, or a run directory's model.keras and labels.txt."""
    import keras

    import keras_vit  # noqa: F401  (registers the layers)
    from export.run_layout import RunLayout
    labels = None
    if os.path.isdir(path):
        run = RunLayout(path)
        path = run.model
        if os.path.exists(run.labels):
            from export.saved_model import read_labels
            labels = read_labels(run.labels)
    if not os.path.exists(path):
        raise ValueError(f"model not found: {path}")
    return keras.saving.load_model(path), labels


def _find_model_for(version_dir):
    """run/export/<name>/<version> -> run/ (when the version lives in a run directory)."""
    from export.run_layout import RunLayout
    run = RunLayout.of_version(version_dir)
    return run.root if os.path.exists(run.model) else None


def run_export(args) -> int:
    from export.saved_model import export_saved_model, read_labels
    from export.verify import format_report, verify_export

    if args.verify:
        source = args.model or _find_model_for(args.verify)
        model = _resolve_model(source)[0] if source else None
        report = verify_export(args.verify, model=model)
        print(format_report(args.verify, report))
        if model is None:
            print("  (no Keras model given: outputs not compared; pass MODEL)")
        return 0 if report["ok"] else 1
    if not args.model:
        raise ValueError("give a .keras model or a run directory to export (or --verify DIR)")
    model, labels = _resolve_model(args.model)
    if args.labels:
        labels = read_labels(args.labels)
    size = None
    if args.image_size:
        size = args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)
    path = export_saved_model(model, args.output, name=args.name or model.name,
                              version=args.version, image_size=size, labels=labels,
                              top_k=args.top_k, overwrite=args.overwrite,
                              frozen=args.frozen, precision=args.precision)
    print(f"exported {path}")
    return 0


def run_predict(args) -> int:
    from export import client

    images = []
    for path in args.images:
        with open(path, "rb") as f:
            images.append(f.read())
    if args.model_dir:
        rows = client.predict_saved_model(args.model_dir, images)
    elif args.server.startswith("grpc://"):
        rows = client.predict_grpc(args.server[len("grpc://"):], images, model=args.name)
    else:
        rows = client.predict_rest(args.server, images, model=args.name)
    for path, row in zip(args.images, rows):
        names = row.get("labels") or [str(c) for c in row["classes"]]
        top = ", ".join(f"{n} {s:.3f}" for n, s in zip(names, row["scores"]))
        print(f"{path}: {top}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_arguments(sub.add_parser("export", help="write a TF Serving version"))
    add_predict_arguments(sub.add_parser("predict", help="classify images"))
    args = parser.parse_args(argv)
    return dispatch(args.command, args, parser.prog)


def dispatch(command, args, prog) -> int:
    import tensorflow as tf

    from export.client import ServingError
    from export.saved_model import ExportError
    try:
        return run_export(args) if command == "export" else run_predict(args)
    except (ValueError, OSError, ExportError, ServingError) as error:
        print(f"{prog} {command}: error: {error}", file=sys.stderr)
        return 2
    except tf.errors.InvalidArgumentError as error:  # e.g. a file that is not an image
        detail = next((line.strip() for line in error.message.splitlines()
                       if line.strip() and not line.strip().startswith(("[[", "Detected",
                                                                        "<stack", "Graph"))),
                      error.message)
        print(f"{prog} {command}: error: invalid input: {detail}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
