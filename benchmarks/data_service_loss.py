"""What losing a tf.data service worker mid-run costs: a short demo training (digits, each
training example labelled with its own index, so every example the trainer receives is
known) through a dispatcher and two workers on 127.0.0.1 (``keras-vit data-service``
subprocesses): with both workers to the end; with one worker killed (SIGKILL) once the
trainer has received ``--kill-after`` of the epoch's examples and started again at the same
address at once; and with that worker killed and never started again (TensorFlow 2.21's
trainer waits for a lost worker's share at the end of the epoch: the trainer's stall
timeout, ``--timeout`` here, ends that wait). Counts, per run, the examples received twice or
more and those never received, against the epoch's order, the epochs the stall timeout
ended, and the run's wall time and examples/s. With ``--overhead N``, also what the stall
timeout costs the normal path: the service's epoch read (no training) N times each with and
without it (alternating, one process), at 224 x 224.

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


def one_run(work, name, epochs, kill_after, restart=True, timeout=120.0):
    """Trains through a fresh dispatcher and two workers; kills worker 2 once
    ``kill_after`` (a fraction of one epoch) of the examples have been received, and starts
    it again at once at its address when ``restart``."""
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
            if not restart:  # the trainer's stall timeout ends the epoch
                return True
            # The same worker started again at its address: TensorFlow 2.21 then lets the
            # epoch end without the stall timeout.
            workers[1] = subprocess.Popen(
                [sys.executable, "-m", "training.cli", "data-service", *worker_args[1]],
                cwd=ROOT, stdout=open(f"{work}/{name}-w2-restarted.log", "w"),
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ROOT})
        return True

    data_service.Tally.add = add_and_maybe_kill
    try:
        start = time.perf_counter()
        result = train(RunConfig(recipe=recipe, output=f"{work}/{name}", export=False,
                                 data_service=f"grpc://127.0.0.1:{port}",
                                 data_service_timeout=timeout),
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


def overhead(work, repetitions, image_size=224, batch_size=64):
    """Seconds to read one epoch of the digits (1,437, at ``image_size``) from the service
    (dispatcher and two workers; no training), ``repetitions`` times each with the stall
    timeout's pipeline and with the service's dataset as it was before it, alternating."""
    import contextlib

    import numpy as np

    from training import RECIPES, RunConfig
    from training.data_service import ServiceInput
    from training.distribute import make_strategy
    from training.run_state import set_up

    dispatcher, port = start_server(["dispatcher", "--port", "0"], f"{work}/overhead-d.log")
    workers = [start_server(["worker", "--dispatcher", f"127.0.0.1:{port}", "--address",
                             "127.0.0.1"], f"{work}/overhead-w{i}.log")[0] for i in (1, 2)]
    recipe = RECIPES["demo"].replace(image_size=image_size, batch_size=batch_size, epochs=1)
    config = RunConfig(recipe=recipe, output=f"{work}/overhead", export=False,
                       data_service=f"grpc://127.0.0.1:{port}")
    strategy = make_strategy("default")
    times = {"with": [], "without": []}
    try:
        with contextlib.ExitStack() as held:
            service = ServiceInput(set_up(config, strategy, False, None, False, held))
            bounded = ServiceInput._bounded
            for repetition in range(2 * repetitions + 1):
                kind = ("with", "without")[repetition % 2]
                ServiceInput._bounded = bounded if kind == "with" else (
                    lambda self, service_ds, epoch, expected: service_ds)
                start = time.perf_counter()
                for _ in strategy.distribute_datasets_from_function(
                        service.dataset_fn(repetition, 0)):
                    pass
                if repetition:  # the first read: warm-up (tracing, the workers' start)
                    times[kind].append(time.perf_counter() - start)
            ServiceInput._bounded = bounded
    finally:
        for process in [*workers, dispatcher]:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    return {"run": f"epoch read, {image_size}x{image_size}, batch {batch_size}",
            **{f"{kind}_stall_timeout_s": [round(t, 2) for t in times[kind]]
               for kind in times},
            **{f"{kind}_median_s": round(float(np.median(times[kind])), 2) for kind in times}}


def guard_cost(batches=400, image_size=224, batch_size=64):
    """Microseconds a batch costs in :func:`training.data_service.service_batches` (the
    stall timeout's reader), on a local dataset of ready batches: the same pipeline read
    with and without it (median of 5 reads each, alternating)."""
    import numpy as np
    import tensorflow as tf

    from training.data_service import service_batches

    ready = tf.data.Dataset.from_tensors(
        (tf.zeros([batch_size, image_size, image_size, 3]), tf.zeros([batch_size], tf.int64))
    ).repeat(batches)
    guarded = tf.data.Dataset.from_generator(lambda: service_batches(ready, 120.0),
                                             output_signature=ready.element_spec)
    times = {"with": [], "without": []}
    for repetition in range(11):
        kind = ("with", "without")[repetition % 2]
        start = time.perf_counter()
        for _ in (guarded if kind == "with" else ready).prefetch(2):
            pass
        if repetition > 1:
            times[kind].append((time.perf_counter() - start) / batches * 1e6)
    return {"run": f"reader cost per batch ({batch_size}x{image_size}x{image_size}), us",
            **{f"{kind}_median_us": round(float(np.median(times[kind])), 1)
               for kind in times}}


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
        "epochs_ended_by_stall_timeout": service["epochs_ended_by_stall_timeout"],
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
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="the trainer's --data-service-timeout, seconds")
    parser.add_argument("--overhead", type=int, default=0, metavar="N",
                        help="also time N epoch reads with and without the stall timeout")
    args = parser.parse_args()
    from export.startup import start_tensorflow
    start_tensorflow("data_service_loss")

    shutil.rmtree(args.work, ignore_errors=True)
    figures = [one_run(args.work, "both-workers", args.epochs, None, timeout=args.timeout),
               one_run(args.work, "one-killed-restarted", args.epochs, args.kill_after,
                       timeout=args.timeout),
               one_run(args.work, "one-killed-never-restarted", args.epochs, args.kill_after,
                       restart=False, timeout=args.timeout)]
    if args.overhead:
        figures += [overhead(args.work, args.overhead), guard_cost()]
    for row in figures:
        print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
