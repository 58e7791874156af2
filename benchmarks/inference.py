"""ViT-B/16 inference images/s: keras_vit against a plain keras.layers ViT, same run.

    python benchmarks/inference.py [--model ViT_B16] [--repeats 5]

Both models have the same architecture and weights count; the plain one is written the
usual way (keras.layers.MultiHeadAttention, 3-D Dense, LayerNormalization). Each setting
is timed as the median of ``--repeats`` calls of a tf.function after two warm-up calls,
settings interleaved. Prints a markdown table; compare ratios within one run only.
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_vit  # noqa: E402


def plain_keras_vit(config, image_size=224, num_classes=1000):
    """A ViT built from stock keras.layers, for comparison."""
    p, d = config.patch_size, config.hidden_size
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(d, p, strides=p)(x)
    x = keras.layers.Reshape((-1, d))(x)
    x = keras_vit.layers.PatchEncoder((image_size // p,) * 2, d)(
        keras.layers.Reshape((image_size // p, image_size // p, d))(x))
    for _ in range(config.num_layers):
        y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        y = keras.layers.MultiHeadAttention(config.num_heads, d // config.num_heads)(y, y)
        x = keras.layers.Add()([x, y])
        y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
        y = keras.layers.Dense(config.mlp_size, activation="gelu")(y)
        y = keras.layers.Dense(d)(y)
        x = keras.layers.Add()([x, y])
    x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = keras_vit.layers.TokenPooling("token")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(x))


def time_calls(fn, x, repeats):
    for _ in range(2):
        fn(x).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x).numpy()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT_B16", choices=sorted(keras_vit.VARIANTS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    config = keras_vit.VARIANTS[args.model]
    results = []
    for dtype in ("float32", "bfloat16"):
        keras.config.set_dtype_policy(dtype)
        models = {"keras_vit": getattr(keras_vit, args.model)(),
                  "plain keras.layers": plain_keras_vit(config)}
        fns = {name: tf.function(lambda t, m=m: m(t, training=False))
               for name, m in models.items()}
        for batch in args.batches:
            x = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, 224, 224, 3)),
                            tf.float32)
            row = {"dtype": dtype, "batch": batch}
            for name, fn in fns.items():  # interleaved within one setting
                row[name] = batch / time_calls(fn, x, args.repeats)
            row["ratio"] = row["keras_vit"] / row["plain keras.layers"]
            results.append(row)
            print(f"  measured {dtype} batch {batch}", flush=True)
        keras.backend.clear_session()
    keras.config.set_dtype_policy("float32")
    print(f"\n{args.model} at 224, inference images/s (median of {args.repeats}), "
          f"{os.cpu_count()} CPU cores\n")
    print("| dtype | batch | keras_vit | plain keras.layers | keras_vit / plain |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['dtype']} | {r['batch']} | {r['keras_vit']:.2f} | "
              f"{r['plain keras.layers']:.2f} | {r['ratio']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
