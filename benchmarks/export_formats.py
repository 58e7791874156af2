"""LiteRT and ONNX files of one model: size, single-image latency, agreement with Keras.

    pip install ".[test]"
    python benchmarks/export_formats.py runs/demo           # a run directory or .keras file
    python benchmarks/export_formats.py --random ViT_B16    # random weights, at 224

Writes each file (LiteRT float32, float16, dynamic-range int8; ONNX) with
``export.export_litert`` / ``export.export_onnx`` into a temporary directory, then runs the
test split of the built-in digits dataset (360 images, through the training pipeline's
preprocessing at the model's resolution) through each file's own runtime (LiteRT
interpreter and ONNX Runtime CPU, ``--threads`` threads) and through Keras, and reports the
largest probability difference and top-1 agreement with Keras, and the median latency of
one image (``--repeats`` calls after a warm-up; Keras: the model in a ``tf.function``).
Prints a markdown table.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np


def digits_test_images(image_size, limit=None):
    import tensorflow as tf

    import keras_vit
    from training.data import load_digits
    test = load_digits().test
    images = [keras_vit.preprocess_image(tf.constant(image), image_size).numpy()
              for image, _ in test.as_numpy_iterator()]
    return np.stack(images[:limit])


def latency_ms(call, image, repeats):
    call(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(image)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def load_model(args):
    import keras

    import keras_vit
    from export.model_sources import load_keras_model
    if not args.random:
        return load_keras_model(args.model)[0]
    model = getattr(keras_vit, args.random)(num_classes=10)
    head = model.get_layer("head")  # zero-initialised: give it random weights
    rng = np.random.default_rng(0)
    head.set_weights([rng.normal(0, 0.05, w.shape).astype("float32")
                      for w in head.get_weights()])
    keras.utils.set_random_seed(0)
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="a run directory or .keras file")
    parser.add_argument("--random", help="a keras_vit builder (e.g. ViT_B16), random weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--images", type=int, default=None, help="at most this many")
    parser.add_argument("--skip-onnx", action="store_true",
                        help="LiteRT only (tf2onnx's conversion needs roughly 60-80x the weights' "
                             "size in memory: over 20 GB for ViT-B/16)")
    args = parser.parse_args()
    if bool(args.model) == bool(args.random):
        parser.error("give MODEL or --random BUILDER")

    import tensorflow as tf

    import keras_vit
    from export import export_litert, export_onnx
    from export.portable import compare
    from export.runtimes import runner

    model = load_model(args)
    images = digits_test_images(keras_vit.model_image_size(model), args.images)
    logits = np.concatenate([np.asarray(model(images[i:i + 32], training=False), np.float64)
                             for i in range(0, len(images), 32)])
    want = np.exp(logits - logits.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    keras_call = tf.function(lambda x: model(x, training=False))
    rows = [("Keras (tf.function)", "-", None,
             latency_ms(lambda x: keras_call(x).numpy(), images[:1], args.repeats), None)]
    settings = [("LiteRT", "litert", None), ("LiteRT", "litert", "float16"),
                ("LiteRT", "litert", "dynamic_int8"), ("ONNX Runtime", "onnx", None)]
    if args.skip_onnx:
        settings = settings[:-1]
    with tempfile.TemporaryDirectory() as tmp:
        for label, fmt, quantization in settings:
            path = os.path.join(tmp, f"m-{quantization}.{'tflite' if fmt == 'litert' else 'onnx'}")
            start = time.perf_counter()
            if fmt == "litert":
                export_litert(model, path, quantization=quantization)
            else:
                export_onnx(model, path)
            seconds = time.perf_counter() - start
            run = runner(fmt, path, args.threads)
            got = np.concatenate([run(images[i:i + 1]) for i in range(len(images))])
            report = compare(want, got, float("inf"))
            rows.append((label, quantization or "float32", os.path.getsize(path),
                         latency_ms(run, images[:1], args.repeats), report))
            print(f"  {label} {quantization or 'float32'}: written and verified in "
                  f"{seconds:.0f} s; {rows[-1][2]:,} bytes, {rows[-1][3]:.2f} ms, max diff "
                  f"{report['max_abs_diff']:.1e}, top-1 {report['top1_agree']}/"
                  f"{report['images']}", flush=True)
    print(f"\n{model.name}, {len(images)} digits test images, {args.threads} threads\n")
    print("| runtime | weights | file size | latency, 1 image | max prob. diff vs Keras | "
          "top-1 = Keras |")
    print("|---|---|---|---|---|---|")
    for label, weights, size, ms, report in rows:
        size_text = "-" if size is None else f"{size / 2**20:.2f} MiB"
        diff = "-" if report is None else f"{report['max_abs_diff']:.1e}"
        agree = "-" if report is None else f"{report['top1_agree']}/{report['images']}"
        print(f"| {label} | {weights} | {size_text} | {ms:.2f} ms | {diff} | {agree} |")


if __name__ == "__main__":
    main()
