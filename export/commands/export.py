"""``keras-vit export`` (also ``python -m export export``): write or verify a TF Serving
version, or a LiteRT / ONNX file."""
from __future__ import annotations

import os

from export.command_line import positive_int

NAME = "export"
HELP = "write / verify a TF Serving model, or a LiteRT / ONNX file"
QUANTIZE = {"float16": "float16", "int8": "dynamic_int8"}


def add_arguments(parser):
    parser.add_argument("model", nargs="?",
                        help="a training run directory, a .keras model, an original .npz "
                             "checkpoint, a timm .safetensors file or a transformers model "
                             "directory")
    parser.add_argument("--format", choices=("savedmodel", "litert", "onnx"),
                        default="savedmodel",
                        help="savedmodel: a TF Serving version (default); litert / onnx: one "
                             ".tflite / .onnx file, pixels in, probabilities out")
    parser.add_argument("--quantize", choices=tuple(QUANTIZE),
                        help="LiteRT only: float16 weights, or int8 dynamic-range quantisation")
    parser.add_argument("--output", default="models",
                        help="base directory (default: models); for litert / onnx a directory "
                             "(file <name>[-<quantize>].tflite / .onnx) or the file itself")
    parser.add_argument("--name", default=None, help="model name (default: the model's)")
    parser.add_argument("--version", type=positive_int, default=None,
                        help="version number, a positive integer (default: the next free one)")
    parser.add_argument("--image-size", type=int, nargs="+", default=None,
                        help="export at another resolution (position embeddings resized)")
    parser.add_argument("--labels", default=None, help="labels file, one class name a line")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--frozen", action="store_true",
                        help="weights as graph constants (LayerNorm and attention scale "
                             "folded): oneDNN's constant-weight kernels without setting "
                             "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 on the server, at 4-5x its "
                             "memory (docs/serving.md, Frozen export)")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                        help="dtype the exported weights are stored and computed in")
    parser.add_argument("--max-pixels", type=positive_int, default=None,
                        help="largest encoded image (width x height, read from its header) "
                             "the server decodes (default: keras_vit.preprocessing."
                             "DEFAULT_MAX_PIXELS, 25 million)")
    parser.add_argument("--max-batch", type=positive_int, default=None,
                        help="most images one request may carry; a larger request is refused "
                             "(InvalidArgument) before decoding (default: export.signatures."
                             "DEFAULT_MAX_BATCH, 64)")
    parser.add_argument("--verify", metavar="VERSION_DIR", default=None,
                        help="verify an exported version (with MODEL: compare outputs); with "
                             "--format litert / onnx: a .tflite / .onnx file against MODEL")


def check(args) -> None:
    """The checks that need no TensorFlow (a ValueError naming the problem)."""
    _check_format_options(args)
    if args.model:
        from export.model_sources import model_kind
        model_kind(args.model)


def run(args) -> int:
    return run_export(args)


def _resolve_model(path):
    """A .keras file, a run directory's model.keras and labels.txt, or an .npz checkpoint."""
    from export.model_sources import load_keras_model
    return load_keras_model(path)


def _find_model_for(version_dir):
    """run/export/<name>/<version> -> run/ (when the version lives in a run directory)."""
    from export.run_layout import RunLayout
    run = RunLayout.of_version(version_dir)
    return run.root if os.path.exists(run.model) else None


def _model_to_compare(args):
    """(model or None, a line saying what the outputs were compared with).

    MODEL when given (the verification fails if the export came from another model);
    otherwise the run directory's model.keras around the version, only if it is the model
    the version was exported from (its weights fingerprint is recorded in the export).
    """
    from export.saved_model import model_fingerprint, read_export_info

    if args.model:
        return _resolve_model(args.model)[0], f"outputs compared with {args.model}"
    source = _find_model_for(args.verify)
    if source is None:
        return None, "no Keras model given: outputs not compared; pass MODEL"
    model = _resolve_model(source)[0]
    recorded = read_export_info(args.verify).get("source", {}).get("weights_sha256")
    if recorded != model_fingerprint(model):
        return None, (f"the model in {source} is not the one this version was exported from: "
                      "outputs not compared; pass MODEL")
    return model, f"outputs compared with the model in {source} (its source)"


# Options of the TF Serving export that mean nothing for a LiteRT or ONNX file.
SAVEDMODEL_ONLY = (("version", None), ("labels", None), ("frozen", False),
                   ("precision", "float32"), ("max_pixels", None),
                   ("max_batch", None))


def _check_format_options(args):
    if args.quantize and args.format != "litert":
        raise ValueError(f"--quantize {args.quantize} is for --format litert only "
                         f"(--format {args.format} writes float32)")
    if args.format == "savedmodel":
        return
    for option, default in SAVEDMODEL_ONLY:
        if getattr(args, option) != default:
            raise ValueError(f"--{option.replace('_', '-')} is for --format savedmodel only")


def _image_size(args):
    if not args.image_size:
        return None
    return args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size)


def _file_path(args, model, quantization):
    """--output as the file itself (with the format's suffix) or as its directory."""
    from export.portable import SUFFIXES
    from export.versions import check_name
    suffix = SUFFIXES[args.format]
    if args.output.endswith(suffix):
        return args.output
    if args.output.endswith(tuple(SUFFIXES.values())):
        raise ValueError(f"--output {args.output}: a {args.format} file ends with {suffix}")
    name = check_name(args.name or model.name)
    return os.path.join(args.output, f"{name}-{args.quantize}{suffix}" if quantization
                        else f"{name}{suffix}")


def run_file_export(args) -> int:
    """--format litert / onnx: write (or with --verify, check) one file."""
    import keras_vit
    from export.portable import export_file, format_verification, verify_file

    quantization = QUANTIZE.get(args.quantize)
    if not args.model:
        raise ValueError("give the model (run directory, .keras, ...) to export as "
                         f"{args.format}"
                         + (" (and to compare --verify's file with)" if args.verify else ""))
    model = _resolve_model(args.model)[0]
    if _image_size(args) is not None:
        model = keras_vit.model_at_resolution(model, _image_size(args))
    if args.verify:
        if not os.path.isfile(args.verify):
            raise ValueError(f"no such file: {args.verify}")
        report = verify_file(args.verify, model, args.format, quantization)
        print(format_verification(args.verify, report))
        if not report["ok"] and args.format == "litert" and quantization is None:
            print("  (compared with float32 tolerances: for a quantised file pass --quantize)")
        return 0 if report["ok"] else 1
    path = _file_path(args, model, quantization)
    report = export_file(model, path, args.format, quantization, overwrite=args.overwrite)
    print(f"exported {path} ({os.path.getsize(path):,} bytes)")
    print(f"  verified: {format_verification(path, report)}")
    return 0


def run_export(args) -> int:
    from export.saved_model import export_saved_model, read_labels
    from export.verify import format_report, verify_export

    _check_format_options(args)
    if args.format != "savedmodel":
        return run_file_export(args)
    if args.verify:
        model, note = _model_to_compare(args)
        report = verify_export(args.verify, model=model)
        print(format_report(args.verify, report))
        print(f"  ({note})")
        return 0 if report["ok"] else 1
    if not args.model:
        raise ValueError("give a .keras model or a run directory to export (or --verify DIR)")
    model, labels = _resolve_model(args.model)
    if args.labels:
        labels = read_labels(args.labels)
    path = export_saved_model(model, args.output, name=args.name or model.name,
                              version=args.version, image_size=_image_size(args),
                              labels=labels,
                              top_k=args.top_k, overwrite=args.overwrite,
                              frozen=args.frozen, precision=args.precision,
                              **{option: getattr(args, option)
                                 for option in ("max_pixels", "max_batch")
                                 if getattr(args, option) is not None})
    print(f"exported {path}")
    return 0
