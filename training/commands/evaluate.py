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

    parser.add_argument("model", help="run directory or .keras file")
    parser.add_argument("--dataset")
    parser.add_argument("--data-dir")
    parser.add_argument("--test-split")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--confusion", metavar="PNG", help="write the confusion matrix")


def check(args):
    """(model file, dataset) of ``evaluate``, checked without TensorFlow."""
    from export.run_layout import RunLayout
    from training.figures import check_png_output

    if args.confusion:
        check_png_output(args.confusion)
    recipe_data = {}
    model_path = args.model
    if os.path.isdir(args.model):
        run = RunLayout(args.model)
        model_path = run.model
        if os.path.exists(run.config):
            from training.run_config import load_run_config
            recipe_data = dataclasses.asdict(load_run_config(args.model).recipe)
    if not os.path.exists(model_path):
        raise ValueError(f"model not found: {model_path}")
    dataset = args.dataset or recipe_data.get("dataset")
    if not dataset:
        raise ValueError("--dataset is needed when evaluating a bare model file")
    return model_path, dataset


def run(args) -> int:
    import keras

    import keras_vit
    from training.data import load_source, make_pipeline
    from training.steps import evaluate

    model_path, dataset = check(args)
    model = keras.saving.load_model(model_path)
    source = load_source(dataset, args.data_dir, test_split=args.test_split)
    size = keras_vit.model_image_size(model)
    test = make_pipeline(source.test, size, args.batch_size, read=source.read)
    results = evaluate(model, test)
    print(f"{source.name}: top-1 {results['top1']:.4f}  top-5 {results['top5']:.4f}  "
          f"loss {results['loss']:.4f}  ({results['num_examples']} examples)")
    report_per_class(model, test, source.labels, args.confusion)
    return 0


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
