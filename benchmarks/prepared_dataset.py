"""``keras-vit prepare`` against reading the folder: the time to prepare a folder of
generated 500x375 JPEGs (ImageNet's typical size), then the training input pipeline's
images/s (read, decode the inception crop, flip, resize to 224, batch 64) and a short
training run's examples/s (the demo's tiny model at 32 px, so the input side dominates),
from ``folder:PATH`` and from the prepared ``tfds:DIR``, in one process, one after the other.

    python benchmarks/prepared_dataset.py --work /tmp/prepared-bench [--images 2000]

Prints one JSON object (the figures) on its last line.
"""
import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_folder(root, count, classes=10, size=(375, 500)):
    """``count`` JPEGs (quality 90) of smooth random content plus grain, ``classes``
    sub-folders; about ImageNet's bytes per image."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    for index in range(count):
        folder = os.path.join(root, f"class{index % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        coarse = rng.uniform(0, 255, (1, size[0] // 25, size[1] // 25, 3)).astype("float32")
        image = tf.image.resize(coarse, size)[0] + rng.normal(0, 12, (*size, 3))
        data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
                                 quality=90)
        with open(os.path.join(folder, f"{index:06d}.jpg"), "wb") as f:
            f.write(data.numpy())


def pipeline_speed(spec):
    """(time to the first batch, images/s over one epoch) of the training pipeline."""
    from training.data import BadImages, load_source, make_train_pipeline

    start = time.perf_counter()
    source = load_source(spec)
    batches = make_train_pipeline(source.train, 224, 64, seed=0, crop_area_min=0.05,
                                  flip=True, read=source.read, bad_images=BadImages())
    iterator = iter(batches)
    next(iterator)
    first = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    for _, labels in iterator:
        count += int(labels.shape[0])
    return first, count / (time.perf_counter() - start)


def training_speed(spec, output):
    """examples/s of a short training run: metrics.json's examples_per_second, the median
    of its 20-step windows after the first (which holds the tracing); 100 steps are 4
    epochs of the 1,600 training images, so the epoch starts are inside the windows."""
    from training import RECIPES, RunConfig, train
    from training.distribute import make_strategy

    recipe = RECIPES["demo"].replace(dataset=spec, image_size=32, batch_size=64, steps=100,
                                     warmup_steps=2)
    result = train(RunConfig(recipe=recipe, output=output, export=False),
                   make_strategy("default"), verbose=False)
    return result["metrics"]["examples_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch directory (replaced)")
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    from export.startup import start_tensorflow
    start_tensorflow("prepared_dataset")
    from training.prepare import prepare_dataset

    shutil.rmtree(args.work, ignore_errors=True)
    folder, prepared = os.path.join(args.work, "images"), os.path.join(args.work, "prepared")
    make_folder(folder, args.images)
    folder_bytes = sum(os.path.getsize(os.path.join(d, f))
                       for d, _, files in os.walk(folder) for f in files)
    start = time.perf_counter()
    prepare_dataset(f"folder:{folder}", prepared)
    figures = {"images": args.images, "folder_mb": folder_bytes / 2 ** 20,
               "prepare_s": time.perf_counter() - start,
               "prepared_mb": sum(os.path.getsize(os.path.join(prepared, f))
                                  for f in os.listdir(prepared)) / 2 ** 20}
    for name, spec in (("folder", f"folder:{folder}"), ("prepared", f"tfds:{prepared}")):
        first, rate = pipeline_speed(spec)
        figures[f"{name}_first_batch_s"] = first
        figures[f"{name}_pipeline_images_per_s"] = rate
        figures[f"{name}_train_examples_per_s"] = training_speed(
            spec, os.path.join(args.work, f"run-{name}"))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
