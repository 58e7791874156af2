"""Peak memory of a training step with and without gradient accumulation (issue 23, item 3):
the same global batch in K micro-batches (``training.steps.make_train_step(accumulate=K)``),
each K in a fresh process on the CPU.

    python benchmarks/accumulate_memory.py [--model ViT_Ti16] [--image-size 160]
        [--batch-size 64] [--accumulate 1 8] [--steps 2]

For each K it prints the process's resident memory once the model and optimizer are built,
the peak from then on over the first (traced) step and ``--steps`` more (Linux ``VmHWM``,
reset through ``/proc/self/clear_refs``), their difference, and the seconds a step took
after the first. Float32, AdamW, clip at global norm 1, random images and labels.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

STEP = r"""
import json, sys, time
import numpy as np, tensorflow as tf, keras
import keras_vit
from training.recipes import RECIPES
from training.optimizers import make_optimizer
from training.steps import make_train_step
model_name, size, batch, accumulate, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])

def memory(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB

keras.utils.set_random_seed(0)
model = getattr(keras_vit, model_name)(image_size=size, num_classes=10)
optimizer = make_optimizer(RECIPES["pretrain"].replace(batch_size=batch), 100)
optimizer.build(model.trainable_variables)
strategy = tf.distribute.get_strategy()
step = make_train_step(model, optimizer, strategy, batch, clip_global_norm=1.0,
                       accumulate=accumulate)
rng = np.random.default_rng(0)
images = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype("float32"))
labels = tf.constant(rng.integers(0, 10, batch))
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
before = memory("VmRSS")
float(step(images, labels)[0])  # traced; the allocator keeps what it took
start = time.perf_counter()
for _ in range(steps):
    float(step(images, labels)[0])
seconds = (time.perf_counter() - start) / steps
print(json.dumps({"accumulate": accumulate, "rss_before_mib": before,
                  "peak_mib": memory("VmHWM"), "step_s": seconds}))
"""


def measure(model, size, batch, accumulate, steps) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", STEP, model, str(size), str(batch),
                             str(accumulate), str(steps)], capture_output=True, text=True,
                            timeout=1800, env=env)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT_Ti16")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--accumulate", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"{args.model} at {args.image_size} px, global batch {args.batch_size}, float32")
    print("| K | micro-batch | RSS before (MiB) | peak over the steps (MiB) | peak - before "
          "(MiB) | s / step |")
    print("|---|---|---|---|---|---|")
    for k in args.accumulate:
        row = measure(args.model, args.image_size, args.batch_size, k, args.steps)
        print(f"| {k} | {args.batch_size // k} | {row['rss_before_mib']:.0f} | "
              f"{row['peak_mib']:.0f} | {row['peak_mib'] - row['rss_before_mib']:.0f} | "
              f"{row['step_s']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
