"""Does the deit augmentation stack starve the model? The training input pipeline's images/s
(decode the inception crop of 500x375 JPEGs, flip, resize to 224, then RandAugment, random
erasing, Mixup/CutMix and soft targets for ``deit``; crop and flip only for ``pretrain``)
against the images/s of ViT-S/16's training step (224 px, AdamW, forward + backward + update)
on the same machine, in one process, one after the other.

    python benchmarks/augment_pipeline.py [--images 384] [--batch 32] [--steps 4]

Prints one JSON object (the figures) on its last line.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def jpegs(count, size=(375, 500)):
    """``count`` JPEGs (quality 90) of smooth random content plus grain, ImageNet's size."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        coarse = rng.uniform(0, 255, (1, size[0] // 25, size[1] // 25, 3)).astype("float32")
        image = tf.image.resize(coarse, size)[0] + rng.normal(0, 12, (*size, 3))
        out.append(tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8),
                                     quality=90).numpy())
    return out


def pipeline_speed(recipe, data, batch):
    """Images/s of one pass of the training pipeline over ``data`` (after its first batch,
    which holds the tracing)."""
    import tensorflow as tf

    from training.data import make_train_pipeline

    ds = tf.data.Dataset.from_tensor_slices((tf.constant(data),
                                             tf.range(len(data), dtype=tf.int64) % 1000))
    batches = make_train_pipeline(ds, 224, batch, seed=0, crop_area_min=recipe.crop_area_min,
                                  flip=recipe.flip, augment=recipe, num_classes=1000)
    iterator = iter(batches)
    next(iterator)
    count, start = 0, time.perf_counter()
    for images, _ in iterator:
        count += int(images.shape[0])
    return count / (time.perf_counter() - start)


def step_speed(recipe, batch, steps):
    """Images/s of the deit recipe's ViT-S/16 training step (median of ``steps`` timed steps
    after two untimed ones), on soft targets as the deit pipeline gives them."""
    import numpy as np
    import tensorflow as tf

    from training.optimizers import make_optimizer
    from training.trainer import build_model, make_train_step

    strategy = tf.distribute.get_strategy()
    model = build_model(recipe, 1000)
    optimizer = make_optimizer(recipe, 1000)
    step = make_train_step(model, optimizer, strategy, batch,
                           clip_global_norm=recipe.clip_global_norm)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, 224, 224, 3)).astype("float32"))
    targets = tf.constant(np.full((batch, 1000), 1e-3, "float32"))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        float(step(images, targets)[0])
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch / float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    from export.startup import start_tensorflow
    start_tensorflow("augment_pipeline")
    from training.recipes import RECIPES

    data = jpegs(args.images)
    figures = {"machine": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "images": args.images, "batch": args.batch}
    for name in ("pretrain", "deit"):
        figures[f"pipeline_{name}_images_per_s"] = round(
            pipeline_speed(RECIPES[name], data, args.batch), 1)
        print(name, "pipeline", figures[f"pipeline_{name}_images_per_s"], "images/s",
              flush=True)
    figures["vit_s16_step_images_per_s"] = round(step_speed(RECIPES["deit"], args.batch,
                                                            args.steps), 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
