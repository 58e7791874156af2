"""``keras-vit evaluate``: top-1 / top-5 and per-class accuracy of a run or a ``.keras``
model on a dataset, and its confusion matrix (``--confusion PNG``)."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

NAME = "evaluate"
HELP = "top-1 / top-5 of a run or model"


def add_arguments(parser) -> None:
    from export.command_line import positive_int

    parser.add_argument("model", help="run directory, .keras file, checkpoint or hf:// name")
    parser.add_argument("--dataset")
    parser.add_argument("--data-dir")
    parser.add_argument("--test-split")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--confusion", metavar="PNG", help="write the confusion matrix")


def check(args):
    """(model, dataset) of ``evaluate``, checked without TensorFlow: the model is anything
    :func:`export.model_sources.model_kind` names except a served one."""
    from export.model_sources import model_kind
    from export.run_layout import RunLayout
    from training.figures import check_png_output

    if args.confusion:
        check_png_output(args.confusion)
    kind = model_kind(args.model)
    if kind in ("server", "saved_model"):
        raise ValueError(f"{args.model} is a served model ({kind}): evaluate a run directory, "
                         "a .keras file or a checkpoint")
    recipe_data = {}
    if kind == "run" and os.path.exists(RunLayout(args.model).config):
        from training.run_config import load_run_config
        recipe_data = dataclasses.asdict(load_run_config(args.model).recipe)
    dataset = args.dataset or recipe_data.get("dataset")
    if not dataset:
        raise ValueError("--dataset is needed when evaluating a bare model file")
    return args.model, dataset


def run(args) -> int:
    from export.model_sources import load_keras_model
    from training.data import load_source
    from training.steps import evaluate

    spec, dataset = check(args)
    model, _ = load_keras_model(spec)
    source = load_source(dataset, args.data_dir, test_split=args.test_split)
    test = evaluation_batches(model, source, args.batch_size)
    results = evaluate(model, test)
    print(f"{source.name}: top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}  "
          f"loss {results['loss']:.4f}  ({results['num_examples']} examples)")
    report_per_class(model, test, source.labels, args.confusion)
    return 0


def evaluation_batches(model, source, batch_size: int):
    """``source``'s test split at ``model``'s resolution, resized with its interpolation
    (a bicubic checkpoint is evaluated on bicubic pixels, as predict and the export see)."""
    import keras_vit
    from keras_vit.preprocessing import model_interpolation
    from training.data import make_pipeline

    return make_pipeline(source.test, keras_vit.model_image_size(model), batch_size,
                         read=source.read, interpolation=model_interpolation(model))


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
        from training.figures import check_png_output
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
