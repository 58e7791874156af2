"""The ``keras-vit`` command: ``train`` (the main job), ``evaluate``, ``export``, ``predict``,
``convert``, ``explain``, ``inspect``. ``python -m training`` runs ``train``."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time


def _train_parser(parser):
    from training.distribute import STRATEGIES
    from training.recipes import DEFAULT_MAX_BAD_IMAGES, PRECISIONS, RECIPES

    # Defaults are None (filled in by _new_config) so that --resume can tell what was given.
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="demo (default: tiny ViT on digits), finetune or pretrain")
    parser.add_argument("--model", help="ViT_B16, R50_ViT_B16, ... or 'tiny'")
    parser.add_argument("--weights", help="pretrained weights: .npz, .keras, .weights.h5 or "
                                          "a published name (imagenet21k, ...)")
    parser.add_argument("--dataset", help="digits, tfds:NAME or folder:PATH")
    parser.add_argument("--data-dir", help="TFDS data directory")
    parser.add_argument("--train-split")
    parser.add_argument("--test-split")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--warmup-steps", type=int)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--strategy", choices=STRATEGIES, help="default: auto")
    parser.add_argument("--tpu", help="TPU name or address (--strategy tpu)")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: float32")
    parser.add_argument("--jit-compile", action="store_true", help="XLA-compile the step")
    parser.add_argument("--output", help="run directory (default: runs/<recipe>-<time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --output from its last checkpoint")
    parser.add_argument("--checkpoint-every", type=int, help="default: 200 steps")
    parser.add_argument("--seed", type=int, help="default: 0")
    parser.add_argument("--no-export", action="store_true", help="skip the TF Serving export")
    parser.add_argument("--max-bad-images", type=int,
                        help="unreadable images skipped before the run stops "
                             f"(default: {DEFAULT_MAX_BAD_IMAGES})")


# What --resume may change: the length of the run (the learning-rate schedule is stretched to
# the new length), checkpointing, the export, and where it runs and reads its data from.
RESUME_MAY_CHANGE = ("steps", "epochs", "checkpoint_every", "no_export", "strategy", "tpu",
                     "data_dir", "max_bad_images")


def _flag(name):
    return "--" + name.replace("_", "-")


def _resume_config(args):
    """The run's own config.json, with the few changes a resume may make."""
    from training.trainer import load_run_config

    if not args.output:
        raise ValueError("--resume needs --output RUN_DIR")
    given = [name for name, value in vars(args).items()
             if name not in ("command", "resume", "output") and value not in (None, False)]
    refused = [name for name in given if name not in RESUME_MAY_CHANGE]
    if refused:
        raise ValueError(f"--resume continues the run as its config.json says and cannot "
                         f"change {', '.join(map(_flag, refused))}; it may change only "
                         f"{', '.join(map(_flag, RESUME_MAY_CHANGE))}")
    config = load_run_config(args.output)
    config.recipe = config.recipe.replace(steps=args.steps, epochs=args.epochs)
    config.checkpoint_every = args.checkpoint_every or config.checkpoint_every
    config.export = config.export and not args.no_export
    config.strategy = args.strategy or config.strategy
    config.data_dir = args.data_dir or config.data_dir
    if args.max_bad_images is not None:
        config.max_bad_images = args.max_bad_images
    return config


def _new_recipe(args):
    from training.recipes import RECIPES

    return RECIPES[args.recipe or "demo"].replace(
        model=args.model, dataset=args.dataset, image_size=args.image_size,
        batch_size=args.batch_size, steps=args.steps, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, epochs=args.epochs)


def _new_config(args):
    from training.trainer import RunConfig

    recipe = _new_recipe(args)
    output = args.output or os.path.join(
        "runs", f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    optional = {name: getattr(args, name) for name in ("strategy", "precision",
                                                       "checkpoint_every", "seed",
                                                       "max_bad_images")
                if getattr(args, name) is not None}
    return RunConfig(recipe=recipe, output=output, jit_compile=args.jit_compile,
                     weights=args.weights, data_dir=args.data_dir,
                     train_split=args.train_split, test_split=args.test_split,
                     export=not args.no_export, **optional)


def run_train(args) -> int:
    from training.distribute import make_strategy
    from training.trainer import train

    config = (_resume_config(args) if args.resume else _new_config(args)).validate()
    strategy = make_strategy(config.strategy, args.tpu or "")  # before other TensorFlow work
    result = train(config, strategy, resume=args.resume)
    metrics = result["metrics"]
    if "export" in metrics and not result.get("already_finished"):
        _check_export(metrics["export"], result["model"], result["source"])
    return 0


def _check_export(version_dir, model, source):
    """Verify the export as TF Serving loads it, then classify a few test images with it."""
    import tensorflow as tf

    from export.client import predict_saved_model
    from export.verify import format_report, verify_export

    report = verify_export(version_dir, model=model)
    print(format_report(version_dir, report))
    images, truth = [], []
    for image, label in source.readable(source.test).take(4):
        if image.dtype != tf.string:
            image = tf.io.encode_png(tf.cast(image, tf.uint8))
        images.append(image.numpy())
        truth.append(source.labels[int(label)])
    rows = predict_saved_model(version_dir, images)
    from export.model_sources import shown_label
    for i, (row, want) in enumerate(zip(rows, truth)):
        names = row.get("labels") or [str(c) for c in row["classes"]]
        print(f"  served prediction for test image {i}: {shown_label(names[0])} "
              f"({row['scores'][0]:.3f}), true label {shown_label(want)}")
    if not report["ok"]:
        from training.trainer import TrainingError
        raise TrainingError(f"the export {version_dir} failed verification (see above)")


def _evaluate_inputs(args):
    """(model file, dataset) of ``evaluate``, checked without TensorFlow."""
    from export.run_layout import RunLayout
    from training.inspect_cli import check_png_output

    if args.confusion:
        check_png_output(args.confusion)
    recipe_data = {}
    model_path = args.model
    if os.path.isdir(args.model):
        run = RunLayout(args.model)
        model_path = run.model
        if os.path.exists(run.config):
            from training.trainer import load_run_config
            recipe_data = dataclasses.asdict(load_run_config(args.model).recipe)
    if not os.path.exists(model_path):
        raise ValueError(f"model not found: {model_path}")
    dataset = args.dataset or recipe_data.get("dataset")
    if not dataset:
        raise ValueError("--dataset is needed when evaluating a bare model file")
    return model_path, dataset


def run_evaluate(args) -> int:
    import keras

    import keras_vit
    from training.data import load_source, make_pipeline
    from training.inspect_cli import report_per_class
    from training.trainer import evaluate

    model_path, dataset = _evaluate_inputs(args)
    model = keras.saving.load_model(model_path)
    source = load_source(dataset, args.data_dir, test_split=args.test_split)
    size = keras_vit.model_image_size(model)
    test = make_pipeline(source.test, size, args.batch_size, read=source.read)
    results = evaluate(model, test)
    print(f"{source.name}: top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}  "
          f"loss {results['loss']:.4f}  ({results['num_examples']} examples)")
    report_per_class(model, test, source.labels, args.confusion)
    return 0


def _convert_parser(parser):
    parser.add_argument("checkpoint", help="original .npz checkpoint, or a published name "
                                           "such as imagenet21k (downloaded once)")
    parser.add_argument("--model", required=True, help="architecture, e.g. ViT_B16")
    parser.add_argument("--image-size", type=int, nargs="+", help="one int or HEIGHT WIDTH "
                        "(default: the checkpoint's); position embeddings are resized to it")
    parser.add_argument("--num-classes", type=int, help="default: the checkpoint's; another "
                        "count gives a zero-initialised head for fine-tuning")
    parser.add_argument("--representation-size", type=int,
                        help="pre-logits width to keep (default: the checkpoint's with its head)")
    parser.add_argument("--classifier", choices=["token", "gap"])
    parser.add_argument("--output", required=True, help="model.keras or model.weights.h5")


def run_convert(args) -> int:
    import keras_vit

    size = args.image_size and (args.image_size[0] if len(args.image_size) == 1
                                else tuple(args.image_size))
    model = keras_vit.convert_checkpoint(
        args.checkpoint, args.model, args.output, image_size=size,
        num_classes=args.num_classes, representation_size=args.representation_size,
        classifier=args.classifier)
    print(f"wrote {args.output}: {args.model} at {keras_vit.model_image_size(model)}, "
          f"{model.output_shape[-1]} outputs, {model.count_params():,} parameters")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="keras-vit", description="Vision Transformer for "
                                     "Keras 3: train, evaluate, export, predict, convert.")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub.add_parser("train", help="train or fine-tune (the main job)"))
    evaluate = sub.add_parser("evaluate", help="top-1 / top-5 of a run or model")
    evaluate.add_argument("model", help="run directory or .keras file")
    evaluate.add_argument("--dataset")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--test-split")
    from export.cli import positive_int
    evaluate.add_argument("--batch-size", type=positive_int, default=64)
    evaluate.add_argument("--confusion", metavar="PNG", help="write the confusion matrix")
    from training.inspect_cli import add_commands
    add_commands(sub)  # explain, inspect
    from export.cli import add_export_arguments, add_predict_arguments
    add_export_arguments(sub.add_parser("export", help="write / verify a TF Serving model, "
                                                       "or a LiteRT / ONNX file"))
    add_predict_arguments(sub.add_parser("predict", help="classify images with any model"))
    _convert_parser(sub.add_parser("convert", help="original .npz -> .keras / .weights.h5"))
    from export.startup import add_verbose_flag
    add_verbose_flag(parser, sub)
    return parser


def _check_arguments(args) -> None:
    """The checks that need no TensorFlow (a ValueError naming the problem), so that refused
    values and missing files answer before it loads; the commands check again as they run."""
    if args.command == "train" and not args.resume:
        _new_recipe(args).validate()
    elif args.command == "evaluate":
        _evaluate_inputs(args)
    elif hasattr(args, "check"):  # explain, inspect (training/inspect_cli.py)
        args.check(args)


def _error(command, error) -> int:
    print(f"keras-vit {command}: error: {error}", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("export", "predict"):
        from export.cli import dispatch
        return dispatch(args.command, args, "keras-vit")
    try:
        _check_arguments(args)
    except ValueError as error:
        return _error(args.command, error)
    from export.startup import start_tensorflow
    start_tensorflow("keras-vit", args.verbose)  # the defaults it reads once, then the import
    from keras_vit.checkpoints import CheckpointError
    from training.trainer import TrainingError
    try:
        if args.command == "train":
            return run_train(args)
        if args.command == "evaluate":
            return run_evaluate(args)
        if hasattr(args, "run"):  # explain, inspect (training/inspect_cli.py)
            return args.run(args)
        return run_convert(args)
    except (ValueError, OSError, TrainingError, CheckpointError) as error:
        return _error(args.command, error)


if __name__ == "__main__":
    sys.exit(main())
