"""Peak memory of one large request (issue 26, item 5): N 1x1 PNGs in one request to the
demo-sized export (ViT 4x4 patches, 64 hidden, 4 layers, 32 px), served through the
TF1-session loader as TF Serving does, in a subprocess measured by ``/usr/bin/time -v``
under an 8 GB address-space limit (``prlimit --as``).

    python benchmarks/request_batch_memory.py [--images 10000] [--work DIR] [--max-batch N]

Prints, for requests of 1, 64 (the default max_batch) and N images, the outcome, the
process's peak RSS and its CPU time (the process's whole life, TensorFlow's start included).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

SERVE = r"""
import sys, time
import tensorflow as tf
version_dir, png, count = sys.argv[1], open(sys.argv[2], "rb").read(), int(sys.argv[3])
graph = tf.Graph()
sess = tf.compat.v1.Session(graph=graph)
with graph.as_default():
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
sig = meta.signature_def["serving_default"]
start = time.time()
try:
    feed = {sig.inputs["image_bytes"].name: [png] * count}
    out = sess.run(sig.outputs["probabilities"].name, feed)
    print("served", out.shape, f"{time.time() - start:.1f} s")
except tf.errors.OpError as error:
    line = next((l for l in error.message.splitlines() if "assertion failed" in l),
                error.message.splitlines()[0])
    print("refused", type(error).__name__, line.strip()[:200],
          f"{time.time() - start:.2f} s")
"""


def export_demo(work: str, max_batch) -> str:
    import keras_vit
    from export import export_saved_model
    model = keras_vit.ViT(image_size=32, num_classes=10, patch_size=4, hidden_size=64,
                          mlp_size=128, num_heads=4, num_layers=4, name="vit_tiny")
    options = {} if max_batch is None else {"max_batch": max_batch}
    return export_saved_model(model, os.path.join(work, "models"), name="vit_tiny",
                              warmup=False, **options)


def measure(version: str, png: str, count: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(["prlimit", f"--as={8 * 2 ** 30}", "/usr/bin/time", "-v",
                             sys.executable, "-c", SERVE, version, png, str(count)],
                            capture_output=True, text=True, timeout=1200, env=env)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr)
    cpu = re.findall(r"(User|System) time \(seconds\): ([\d.]+)", result.stderr)
    return {"images": count, "outcome": result.stdout.strip().splitlines()[-1:],
            "peak_rss_mb": int(peak.group(1)) / 1024 if peak else None,
            "cpu_s": sum(float(v) for _, v in cpu), "rc": result.returncode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="request_batch_memory")
    os.makedirs(work, exist_ok=True)
    import tensorflow as tf
    png = os.path.join(work, "one.png")
    with open(png, "wb") as f:
        f.write(tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy())
    version = export_demo(work, args.max_batch)
    for count in (1, 64, args.images):
        print(json.dumps(measure(version, png, count)), flush=True)


if __name__ == "__main__":
    main()
