"""Where an exported version's memory goes in the TF1-session loader (what TF Serving uses):
resident and peak memory of this process after importing TensorFlow, after loading the
version, after its first and later calls at each batch size, and what stays resident once
freed memory is handed back to the system (``malloc_trim``).

    python benchmarks/loader_memory.py models/vit/1 --batches 1 16
    TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 python benchmarks/loader_memory.py models/vit/1

Imports TensorFlow only (not keras_vit), like the server. Feeds random pixels to the
``serving_images`` signature at the export's resolution (``--size``).
"""
import argparse
import ctypes
import time


def memory():
    """(resident, peak resident) of this process in MiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) // 1024
    return values["VmRSS"], values["VmHWM"]


def report(stage, seconds=None):
    resident, peak = memory()
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    print(f"{stage:34s} resident {resident:6d} MiB   peak {peak:6d} MiB{took}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("version_dir")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    report("imported TensorFlow")
    session = tf.compat.v1.Session(graph=tf.Graph())
    started = time.perf_counter()
    meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], args.version_dir)
    report("loaded the version", time.perf_counter() - started)
    signature = meta.signature_def["serving_images"]
    feed = signature.inputs["images"].name
    fetch = signature.outputs["probabilities"].name
    for batch in args.batches:
        images = np.random.default_rng(0).uniform(
            0, 255, (batch, args.size, args.size, 3)).astype("float32")
        for call in ("first", "second"):
            started = time.perf_counter()
            session.run(fetch, {feed: images})
            report(f"batch {batch}, {call} call", time.perf_counter() - started)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    report("after malloc_trim (live)")


if __name__ == "__main__":
    main()
