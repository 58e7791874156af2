"""``keras-vit train`` (also ``python -m training``): train or fine-tune a ViT, or continue
a run with ``--resume``; then verify the run's TF Serving export and classify a few test
images with it."""
from __future__ import annotations

import os
import time

NAME = "train"
HELP = "train or fine-tune (the main job)"


def add_arguments(parser):
    from training.data_service import DEFAULT_STALL_TIMEOUT_S
    from training.distribute import STRATEGIES
    from training.recipes import DEFAULT_MAX_BAD_IMAGES, PRECISIONS, RECIPES

    # Defaults are None (filled in by _new_config) so that --resume can tell what was given.
    parser.add_argument("--recipe", choices=sorted(RECIPES),
                        help="demo (default: tiny ViT on digits), finetune, pretrain, or "
                             "from scratch: deit, plain")
    parser.add_argument("--model", help="ViT_B16, R50_ViT_B16, ... or 'tiny'")
    parser.add_argument("--weights", help="pretrained weights: .npz, .keras, .weights.h5 or "
                                          "a published name (imagenet21k, ...)")
    parser.add_argument("--dataset", help="digits, tfds:NAME, tfds:DIR (keras-vit prepare's "
                                          "output) or folder:PATH")
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
    from training.recipes import FROM_SCRATCH_FLAGS
    for field, kind, text in FROM_SCRATCH_FLAGS:  # augmentation and model options
        parser.add_argument(_flag(field), type=kind, help=text)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved run configuration (JSON) and exit")
    parser.add_argument("--data-service", metavar="grpc://HOST:PORT",
                        help="read, decode and augment on the workers of this tf.data service "
                             "dispatcher (keras-vit data-service); not bit-exact")
    parser.add_argument("--data-service-timeout", type=float, metavar="SECONDS",
                        help="with --data-service: a trainer that has waited this long for "
                             "the service's next batch (a lost worker) takes the rest of the "
                             "epoch as not delivered and goes on (default: "
                             f"{DEFAULT_STALL_TIMEOUT_S:g})")
    parser.add_argument("--accumulate", type=int, metavar="K",
                        help="gradient accumulation: each step runs K micro-batches, the K "
                             "slices of the batch, one after the other (the same update in "
                             "1/K of the activation memory; default: 1)")
    parser.add_argument("--ema-decay", type=float, metavar="D",
                        help="keep an exponential moving average of the weights (decay D a "
                             "step, e.g. 0.9999); the saved and exported model is the "
                             "average")


def check(args) -> None:
    """The recipe's values, checked before TensorFlow loads (a ValueError naming the flag)."""
    if not args.resume:
        recipe = _new_recipe(args).validate()
        if args.accumulate is not None:
            from training.recipes import check_accumulate
            check_accumulate(args.accumulate, recipe.batch_size)
    if args.data_service_timeout is not None:
        from training.data_service import check_stall_timeout
        check_stall_timeout(args.data_service_timeout)
        if args.data_service is None and not args.resume:
            raise ValueError("--data-service-timeout applies only with --data-service")
    if args.data_service is not None:
        from training.data_service import check_data_service
        check_data_service(args.data_service, args.dataset or "")
        if args.max_bad_images is not None:
            raise ValueError("--max-bad-images does not apply with --data-service: the workers "
                             "leave unreadable images out and metrics.json counts them among "
                             "the examples not delivered")


# What --resume may change: the length of the run (the learning-rate schedule is stretched to
# the new length), checkpointing, the export, and where it runs and reads its data from.
RESUME_MAY_CHANGE = ("steps", "epochs", "checkpoint_every", "no_export", "strategy", "tpu",
                     "data_dir", "max_bad_images", "data_service", "data_service_timeout")


def _flag(name):
    return "--" + name.replace("_", "-")


def _resume_config(args):
    """The run's own config.json, with the few changes a resume may make."""
    from training.run_config import load_run_config

    if not args.output:
        raise ValueError("--resume needs --output RUN_DIR")
    given = [name for name, value in vars(args).items()
             if name not in ("command", "resume", "output", "dry_run")
             and value is not None and value is not False]  # 0 is a value given
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
    config.data_service = args.data_service or config.data_service
    config.data_service_timeout = args.data_service_timeout or config.data_service_timeout
    return config


def _new_recipe(args):
    from training.recipes import FROM_SCRATCH_FLAGS, RECIPES

    return RECIPES[args.recipe or "demo"].replace(
        model=args.model, dataset=args.dataset, image_size=args.image_size,
        batch_size=args.batch_size, steps=args.steps, learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, epochs=args.epochs,
        ema_decay=args.ema_decay,
        **{field: getattr(args, field) for field, _, _ in FROM_SCRATCH_FLAGS})


def _new_config(args):
    from training.run_config import RunConfig

    recipe = _new_recipe(args)
    output = args.output or os.path.join(
        "runs", f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    optional = {name: getattr(args, name) for name in ("strategy", "precision",
                                                       "checkpoint_every", "seed",
                                                       "max_bad_images", "data_service",
                                                       "data_service_timeout", "accumulate")
                if getattr(args, name) is not None}
    return RunConfig(recipe=recipe, output=output, jit_compile=args.jit_compile,
                     weights=args.weights, data_dir=args.data_dir,
                     train_split=args.train_split, test_split=args.test_split,
                     export=not args.no_export, **optional)


def run(args) -> int:
    from training.distribute import make_strategy
    from training.trainer import train

    config = (_resume_config(args) if args.resume else _new_config(args)).validate()
    if args.dry_run:
        print(config.to_json())
        return 0
    if config.data_service:  # before anything is written: a bounded, one-line error
        from training.data_service import check_reachable
        check_reachable(config.data_service)
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
        from training.run_config import TrainingError
        raise TrainingError(f"the export {version_dir} failed verification (see above)")
