"""What losing a tf.data service worker mid-run costs: a short demo training (digits, each
training example labelled with its own index, so every example the trainer receives is
known) through a dispatcher and two workers on 127.0.0.1 (``keras-vit data-service``
subprocesses), once with both workers to the end and once with one worker killed (SIGKILL)
once the trainer has received ``--kill-after`` of the epoch's examples and started again at
the same address at once (TensorFlow 2.21's trainer waits for a lost worker at the end of
the epoch; a worker that never comes back stalls it). Counts, per run,
the examples received twice or more and those never received, against the epoch's order,
and the run's wall time and examples/s.

    python benchmarks/data_service_loss.py --work /tmp/data-service-loss [--epochs 1]

Prints one JSON object (the figures) on its last line.
"""
import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, log_path, timeout=120):
    """A ``keras-vit data-service ...`` subprocess and the port it printed."""
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "training.cli", "data-service", *args],
                               cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r"serving on port (\d+)", open(log_path).read())
        if found:
            return process, int(found.group(1))
        if process.poll() is not None:
            raise RuntimeError(f"{' '.join(args)} exited: {open(log_path).read()[-500:]}")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{' '.join(args)} did not start in {timeout} s")


def indexed_digits():
    """The digits with each training example's label its own index (1,437 classes)."""
    import numpy as np
    import tensorflow as tf

    from training.data import load_digits

    digits = load_digits()
    images, _ = tf.data.Dataset.get_single_element(digits.train.batch(digits.num_train))
    return dataclasses.replace(
        digits, name="digits-indexed",
        train=tf.data.Dataset.from_tensor_slices(
            (images, np.arange(digits.num_train, dtype=np.int64))),
        num_classes=digits.num_train, labels=[str(i) for i in range(digits.num_train)])


def one_run(work, name, epochs, kill_after):
    """Trains through a fresh dispatcher and two workers; kills worker 2 once
    ``kill_after`` (a fraction of one epoch) of the examples have been received."""
    import numpy as np

    from training import RECIPES, RunConfig, train
    from training import data_service
    from training.distribute import make_strategy

    os.makedirs(work, exist_ok=True)
    dispatcher, port = start_server(["dispatcher", "--port", "0"], f"{work}/{name}-d.log")
    worker_args = [["worker", "--dispatcher", f"127.0.0.1:{port}", "--address", "127.0.0.1",
                    "--port", str(free_port())] for _ in (1, 2)]
    workers = [start_server(args, f"{work}/{name}-w{i}.log")[0]
               for i, args in enumerate(worker_args, 1)]
    source = indexed_digits()
    recipe = RECIPES["demo"].replace(epochs=epochs, warmup_steps=2)
    steps_per_epoch = source.num_train // recipe.batch_size
    killed = {}
    add = data_service.Tally.add

    def add_and_maybe_kill(tally, labels):
        add(tally, labels)
        killed["tally"] = tally
        if kill_after is not None and "at_examples" not in killed and \
                tally.label_counts.sum() >= kill_after * steps_per_epoch * recipe.batch_size:
            workers[1].send_signal(signal.SIGKILL)
            workers[1].wait()
            killed["at_examples"] = int(tally.label_counts.sum())
            # The same worker started again at its address: what TensorFlow 2.21 needs for
            # the epoch to end (a worker that never comes back holds the epoch's end).
            workers[1] = subprocess.Popen(
                [sys.executable, "-m", "training.cli", "data-service", *worker_args[1]],
                cwd=ROOT, stdout=open(f"{work}/{name}-w2-restarted.log", "w"),
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})
        return True

    data_service.Tally.add = add_and_maybe_kill
    try:
        start = time.perf_counter()
        result = train(RunConfig(recipe=recipe, output=f"{work}/{name}", export=False,
                                 data_service=f"grpc://127.0.0.1:{port}"),
                       make_strategy("default"), source=source, verbose=False)
        wall = time.perf_counter() - start
    finally:
        data_service.Tally.add = add
        for process in [*workers, dispatcher]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*workers, dispatcher]:
            process.wait(timeout=60)
    metrics = result["metrics"]
    counts = np.zeros(source.num_train, np.int64)
    # The trainer's data: each epoch's order, as training.data_service.ServiceInput makes it.
    for epoch in range(epochs):
        order = np.random.default_rng([0, epoch]).permutation(source.num_train)
        counts[order[:steps_per_epoch * recipe.batch_size]] += 1  # expected
    return _figures(name, metrics, counts, killed.pop("tally").label_counts, wall, killed,
                    epochs)


def _figures(name, metrics, expected, got, wall, killed, epochs):
    import numpy as np

    service = metrics["data_service"]
    return {
        "run": name, "epochs": epochs, "steps": metrics["steps"],
        "examples_expected": int(expected.sum()),
        "examples_received": service["examples_received"],
        "stand_ins_label_minus_1": service["examples_not_delivered"],
        "examples_repeated": int(np.maximum(got - expected, 0).sum()),
        "examples_never_received": int(np.maximum(expected - got, 0).sum()),
        "killed_after_examples": killed.get("at_examples"),
        "wall_time_s": round(wall, 1),
        "examples_per_second": round(metrics["examples_per_second"] or 0, 1),
        "top1": round(metrics["top1"], 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", required=True, help="scratch directory (replaced)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--kill-after", type=float, default=0.4,
                        help="fraction of the first epoch received before the kill")
    args = parser.parse_args()
    from export.startup import start_tensorflow
    start_tensorflow("data_service_loss")

    shutil.rmtree(args.work, ignore_errors=True)
    figures = [one_run(args.work, "both-workers", args.epochs, None),
               one_run(args.work, "one-killed", args.epochs, args.kill_after)]
    for row in figures:
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
