"""``keras-vit data-service`` and ``train --data-service``: a dispatcher and two workers on
127.0.0.1 (the commands themselves, as subprocesses) serve the demo's training input; each
example of the epoch arrives exactly once; the servers stop cleanly on SIGTERM; what cannot
work is a bounded one-line error."""
import dataclasses
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_the_test_process():
    """(preexec) The child is SIGKILLed when the test process dies, even by SIGKILL: without
    it, servers of a killed pytest (Ctrl-C twice, kill -9, a crashed xdist worker) lived on
    as orphans holding their ports and a core."""
    if sys.platform.startswith("linux"):
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(args, log_path):
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "training.cli", "data-service", *args],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO,
                                    "HOME": str(log_path.parent)},
                               preexec_fn=_die_with_the_test_process)
    return process, log_path


def _port(started, timeout=180):
    process, log_path = started
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = re.search(r"serving on port (\d+)", log_path.read_text())
        if found:
            return int(found.group(1))
        assert process.poll() is None, log_path.read_text()[-2000:]
        time.sleep(0.2)
    raise AssertionError(f"no port printed in {timeout} s: {log_path.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def service(tmp_path_factory, lost_worker):
    """grpc://127.0.0.1:PORT of a dispatcher with two workers; on teardown, each server must
    stop on SIGTERM with exit code 0. (Asks for ``lost_worker`` only to start that run
    first: it runs, mostly tracing and waiting, while the tests here do.)"""
    logs = tmp_path_factory.mktemp("data-service")
    port = _free_port()
    dispatcher = _start(["dispatcher", "--port", str(port)], logs / "dispatcher.log")
    # Started together: a worker waits for the dispatcher to come up.
    workers = [_start(["worker", "--dispatcher", f"127.0.0.1:{port}", "--address",
                       "127.0.0.1"], logs / f"worker{i}.log") for i in (1, 2)]
    assert _port(dispatcher) == port
    for worker in workers:
        _port(worker)
    yield f"grpc://127.0.0.1:{port}"
    for process, _ in [*workers, dispatcher]:
        process.send_signal(signal.SIGTERM)
    for process, log_path in [*workers, dispatcher]:
        assert process.wait(timeout=60) == 0, log_path.read_text()[-2000:]
        assert "stopped" in log_path.read_text().splitlines()[-1]


def _indexed_digits(count):
    """The first ``count`` training digits, each labelled with its own index."""
    import tensorflow as tf

    from training.data import load_digits

    digits = load_digits()
    images, _ = tf.data.Dataset.get_single_element(digits.train.take(count).batch(count))
    return dataclasses.replace(
        digits, train=tf.data.Dataset.from_tensor_slices(
            (images, np.arange(count, dtype=np.int64))),
        num_train=count, num_classes=count, labels=[str(i) for i in range(count)])


def test_the_demo_trains_through_a_dispatcher_and_two_workers(service, tmp_path):
    from training import RECIPES, RunConfig, train
    from training.distribute import make_strategy

    source = _indexed_digits(200)  # 6 steps of 32 an epoch, 8 examples left out
    recipe = RECIPES["demo"].replace(batch_size=32, epochs=2, warmup_steps=1)
    result = train(RunConfig(recipe=recipe, output=str(tmp_path / "run"), export=False,
                             data_service=service),
                   make_strategy("default"), source=source, verbose=False)
    metrics = result["metrics"]
    assert metrics["steps"] == 12 and np.isfinite(metrics["test_loss"])
    assert metrics["data_service"]["processing_mode"] == "distributed_epoch"
    assert len(metrics["data_service"]["workers_at_start"]) == 2
    assert metrics["data_service"]["examples_received"] == 12 * 32
    assert metrics["data_service"]["examples_not_delivered"] == 0
    # Each epoch: the first 192 of its shuffled order, each exactly once.
    expected = np.zeros(200, np.int64)
    for epoch in range(2):
        expected[np.random.default_rng([0, epoch]).permutation(200)[:192]] += 1
    np.testing.assert_array_equal(result["data_service_tally"].label_counts, expected)


def test_no_dispatcher_or_no_worker_is_a_quick_one_line_error(tmp_path, capsys):
    import tensorflow as tf

    from training.cli import main

    port = _free_port()
    start = time.perf_counter()
    assert main(["train", "--data-service", f"grpc://127.0.0.1:{port}", "--steps", "1",
                 "--output", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - start < 15
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"keras-vit train: error: cannot reach a tf.data service dispatcher at "
                     f"127.0.0.1:{port}: Connection refused"], lines
    assert not (tmp_path / "run").exists()

    service = tf.data.experimental.service
    lonely = service.DispatchServer(service.DispatcherConfig(port=0))
    try:
        assert main(["train", "--data-service", lonely.target.replace("localhost", "127.0.0.1"),
                     "--steps", "1", "--output", str(tmp_path / "run")]) == 2
    finally:
        lonely.stop()
    assert "no worker is registered with the dispatcher" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["train", "--data-service", "127.0.0.1:5050"], "expected grpc://HOST:PORT"),
    (["train", "--data-service", "grpc://127.0.0.1:0"], "with a port in 1..65535"),
    (["train", "--data-service", "grpc://h:1", "--dataset", "tfds:mnist"],
     "cannot serve --dataset tfds:mnist"),
    (["train", "--data-service", "grpc://h:1", "--max-bad-images", "3"],
     "--max-bad-images does not apply with --data-service"),
    (["data-service", "worker", "--dispatcher", "nohost"], "--dispatcher 'nohost'"),
    (["data-service", "dispatcher", "--port", "70000"], "--port 70000"),
    (["train", "--data-service-timeout", "0"], "--data-service-timeout 0.0: expected a number "
     "of seconds > 0"),
    (["train", "--data-service-timeout", "5"], "applies only with --data-service"),
])
def test_what_cannot_work_is_refused_in_one_line(argv, message, capsys):
    from training.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and message in err, err


def test_the_deit_augmentations_reach_the_batches_of_the_service(service, tmp_path):
    """RandAugment and erasing run on the workers, Mixup / CutMix and the soft targets on
    the trainer: the service's batches carry soft (mixed) targets, as without the service."""
    import contextlib

    import tensorflow as tf

    from training import RECIPES, RunConfig
    from training.data_service import ServiceInput
    from training.distribute import make_strategy
    from training.run_state import set_up

    recipe = RECIPES["deit"].replace(model="tiny", dataset="digits", image_size=32,
                                     batch_size=32, steps=3, warmup_steps=1, epochs=None)
    config = RunConfig(recipe=recipe, output=str(tmp_path / "run"), export=False,
                       data_service=service)
    strategy = make_strategy("default")
    with contextlib.ExitStack() as held:
        run = set_up(config, strategy, False, None, False, held)
        service_input = ServiceInput(run)
        dataset = strategy.distribute_datasets_from_function(
            service_input.dataset_fn(0, 0))
        images, targets = next(iter(dataset))
    assert targets.shape == (32, 10) and targets.dtype == tf.float32
    assert np.allclose(np.sum(targets, axis=-1), 1.0, atol=1e-5)
    assert np.max(targets) < 1.0  # label smoothing and mixing: no one-hot row


def _train_losing_a_worker(port, doomed_pid, argv):
    """Run in a subprocess by the test below (its time bound): a dispatcher on ``port`` (here)
    for the worker ``doomed_pid``; once the trainer has received 10 batches from that worker
    alone, a second worker joins (here) and the first is SIGKILLed; ``keras-vit train ARGV``
    runs through them. By then the trainer's first step is traced and waits on the worker
    (RandAugment on it costs more than the tiny model's step), so the worker dies in the
    middle of a batch: the only kind of loss (a TensorFlow worker does not work ahead of
    requests; one killed while idle costs no example)."""
    import os

    import tensorflow as tf

    from training import data_service
    from training.cli import main

    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=port))
    while not data_service.probe_dispatcher("127.0.0.1", port):
        time.sleep(0.2)
    add, live = data_service.Tally.add, []

    def add_then_swap(tally, labels):
        add(tally, labels)
        if not live and tally.label_counts.sum() >= 10 * 32:
            live.append(service.WorkerServer(service.WorkerConfig(
                dispatcher_address=f"127.0.0.1:{port}", worker_address="127.0.0.1:%port%")))
            os.kill(doomed_pid, signal.SIGKILL)
            print(f"killed after {int(tally.label_counts.sum())} examples", flush=True)
        return True

    data_service.Tally.add = add_then_swap
    code = main(argv)
    live[0].stop()
    dispatcher.stop()
    sys.exit(code)


LOST_WORKER_BOUND_S = 240  # from the start of the module's first test using the service


@pytest.fixture(scope="module")
def lost_worker(tmp_path_factory):
    """The run of test_a_worker_lost_for_good_costs_its_examples_not_the_run, started in the
    background: a worker process (doomed) and the trainer's process (:func:`_train_losing_a
    _worker`, with the dispatcher and the second worker); yields (trainer process, when it
    started, its directory); on teardown, kills what is left."""
    logs = tmp_path_factory.mktemp("lost-worker")
    port = _free_port()
    doomed = _start(["worker", "--dispatcher", f"127.0.0.1:{port}", "--address", "127.0.0.1"],
                    logs / "doomed.log")[0]
    argv = ["train", "--data-service", f"grpc://127.0.0.1:{port}", "--data-service-timeout",
            "10", "--recipe", "deit", "--model", "tiny", "--dataset", "digits", "--image-size",
            "32", "--epochs", "2", "--batch-size", "32", "--warmup-steps", "1", "--no-export",
            "--output", str(logs / "run")]
    code = (f"from tests.training.test_data_service import _train_losing_a_worker as t; "
            f"t({port}, {doomed.pid}, {argv!r})")
    trainer = subprocess.Popen([sys.executable, "-c", code], cwd=REPO,
                               stdout=open(logs / "trainer.out", "w"),
                               stderr=open(logs / "trainer.err", "w"),
                               env={"PATH": "/usr/bin:/bin", "PYTHONPATH": REPO,
                                    "HOME": str(logs)},
                               preexec_fn=_die_with_the_test_process)
    yield trainer, time.monotonic(), logs
    for process in (trainer, doomed):
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_worker_lost_for_good_costs_its_examples_not_the_run(lost_worker):
    """A dispatcher and two workers on 127.0.0.1: one worker, alone at first, is SIGKILLed
    mid-epoch and never restarted while the other goes on. TensorFlow 2.21's trainer would
    wait for the lost worker's share at the end of the epoch for ever; with
    --data-service-timeout the run takes every step, counts what the worker took with it as
    not delivered, starts the next epoch (a new job, which the dead worker, still
    registered, cannot stall: all of that epoch's examples come) and exits 0."""
    import json

    trainer, started, logs = lost_worker
    try:  # the bound: on TensorFlow's own behaviour the run never ends
        code = trainer.wait(timeout=max(1.0, started + LOST_WORKER_BOUND_S - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the run did not end within {LOST_WORKER_BOUND_S} s: "
                             f"{(logs / 'trainer.err').read_text()[-2000:]}") from None
    out, err = (logs / "trainer.out").read_text(), (logs / "trainer.err").read_text()
    assert code == 0, (out + err)[-3000:]
    assert re.search(r"killed after \d+ examples", out), out[-2000:]
    stalls = re.findall(r"no batch from the tf.data service at \S+ for 10 s in epoch (\d+): "
                        r"a worker was probably lost", err)
    assert stalls == ["1"], err[-3000:]
    metrics = json.loads((logs / "run" / "metrics.json").read_text())
    served = metrics["data_service"]
    assert metrics["steps"] == 2 * 44  # 1,437 digits: 44 steps of 32 an epoch
    assert served["examples_not_delivered"] > 0
    assert served["examples_received"] + served["examples_not_delivered"] == 88 * 32
    assert served["epochs_ended_by_stall_timeout"] == [1]
    assert served["stall_timeout_s"] == 10
