"""Real (tiny) training runs: data sources, strategies, resume after kill -9, NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, random_images, run_python
from tests.training.conftest import rewind_run
from training import RECIPES, RunConfig, train
from training.data import DataError, load_source
from training.distribute import make_strategy

# A very small recipe for API-level tests: the demo's model at 16 px, few steps.
QUICK = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=6, warmup_steps=2)


def _cli(*args, env=None, timeout=900):
    full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_main_job_reaches_95_percent_and_writes_the_run_directory(tmp_path, capsys):
    """`keras-vit train` with no arguments: the project's main job, end to end."""
    out = str(tmp_path / "run")
    result = _cli("--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["top1"] > 0.95, metrics
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    # top-1 computed here, independently of the trainer's metric (argmax, no ties counted).
    import keras
    from training.data import load_digits
    test = load_digits().test
    images = np.stack([tf.image.resize(tf.cast(x, tf.float32), (32, 32)).numpy()
                       for x, _ in test])
    labels = np.array([int(y) for _, y in test])
    logits = keras.saving.load_model(os.path.join(out, "model.keras")).predict(images, verbose=0)
    assert metrics["top1"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-9)
    assert metrics["steps"] == 660 and metrics["examples_per_second"] > 0
    for item in ("config.json", "checkpoints", "logs", "model.keras", "labels.txt"):
        assert os.path.exists(os.path.join(out, item)), item
    assert os.listdir(os.path.join(out, "logs", "train"))  # TensorBoard events
    assert os.path.exists(os.path.join(out, "export", "vit_tiny", "1", "saved_model.pb"))
    assert "verify" in result.stdout and ": OK" in result.stdout
    assert "served prediction for test image 0" in result.stdout
    # keras-vit evaluate on the run directory gives the same accuracy (its main in this
    # process: the predictions above already agree with the trainer's to the example; a
    # second interpreter cost a TensorFlow start-up and proved nothing more).
    from training.cli import main
    capsys.readouterr()
    assert main(["evaluate", out]) == 0
    evaluated = capsys.readouterr()
    assert f"top-1 {metrics['top1']:.4f}" in evaluated.out, evaluated.err[-2000:]


def test_evaluation_does_not_count_ties_as_hits():
    """A fresh model's head is zero: every logit ties, so nothing is a hit. (A tie-counting
    top-k scores it 1.0; passes once keras_vit's tie-safe top-k is in the trainer, issue 10.)"""
    from training import evaluate
    from training.data import load_digits, make_pipeline
    from training.trainer import build_model
    model = build_model(RECIPES["demo"].replace(image_size=16), 10)
    results = evaluate(model, make_pipeline(load_digits().test, 16, 90))
    assert results["num_examples"] == 360
    assert results["top1"] < 0.5 and results["top5"] < 0.9, results


def test_run_directory_on_a_non_local_filesystem(tmp_path, monkeypatch):
    """Run directories go through tf.io.gfile: TensorFlow's ram:// filesystem holds the whole
    run (and a resume of it); nothing is created on the local disk."""
    monkeypatch.chdir(tmp_path)
    out = "ram://keras-vit-test/run"
    config = RunConfig(recipe=QUICK.replace(steps=4), output=out, checkpoint_every=2,
                       export=False)
    train(config, make_strategy("default"), verbose=False)
    for name in ("config.json", "labels.txt", "model.keras", "metrics.json"):
        assert tf.io.gfile.exists(f"{out}/{name}"), name
    assert tf.train.latest_checkpoint(f"{out}/checkpoints").endswith("ckpt-4")
    assert tf.io.gfile.listdir(f"{out}/logs/train")
    config.recipe = config.recipe.replace(steps=6)
    resumed = train(config, make_strategy("default"), resume=True, verbose=False)
    assert resumed["metrics"]["steps"] == 6
    assert json.loads(tf.io.gfile.GFile(f"{out}/metrics.json").read())["steps"] == 6
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="pass --no-export"):
        train(RunConfig(recipe=QUICK, output="ram://keras-vit-test/other"),
              make_strategy("default"), verbose=False)


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):
        source = load_source("tfds:cifar10")
        assert source.num_classes == 10 and len(source.labels) == 10
        assert source.num_train == 40 and source.num_test == 40
        result = train(RunConfig(recipe=QUICK.replace(dataset="tfds:cifar10"),
                                 output=str(tmp_path / "run"), export=False),
                       make_strategy("default"), source=source, verbose=False)
    assert result["metrics"]["steps"] == 6
    assert 0 <= result["metrics"]["top1"] <= 1


def test_image_folder_source(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for cls, value in (("cat", 30), ("dog", 220)):
        os.makedirs(root / cls)
        for i in range(10):
            image = np.clip(rng.normal(value, 10, (20 + i, 24, 3)), 0, 255).astype(np.uint8)
            encode = tf.io.encode_png if i % 2 else tf.io.encode_jpeg
            ext = "png" if i % 2 else "jpg"
            (root / cls / f"{i}.{ext}").write_bytes(encode(image).numpy())
    source = load_source(f"folder:{root}")
    assert source.labels == ["cat", "dog"] and source.num_train + source.num_test == 20
    recipe = QUICK.replace(dataset=f"folder:{root}", batch_size=4, steps=4,
                           crop_area_min=0.5, flip=True)
    result = train(RunConfig(recipe=recipe, output=str(tmp_path / "run")),
                   make_strategy("default"), source=source, verbose=False)
    assert result["metrics"]["steps"] == 4
    assert os.path.exists(result["metrics"]["export"])  # labels travel into the export


@pytest.mark.parametrize("spec,match", [("mnist", "unknown dataset"),
                                        ("folder:/no/such/dir", "not found"),
                                        ("tfds:no_such_dataset_xyz", "unknown TFDS dataset")])
def test_bad_dataset_gives_one_line_error(spec, match):
    with pytest.raises(DataError, match=match):
        load_source(spec)


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
    result = _cli("--dataset", "folder:/no/such/dir", "--output", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("keras-vit train: error: image "
                                                            "folder not found")
    result = _cli("--resume", "--output", str(tmp_path / "none"))
    assert result.returncode == 2 and "config.json not found" in result.stderr


def test_mirrored_strategy_on_two_logical_cpus_matches_one_replica(tmp_path):
    """The global gradient is clipped after the all-reduce in every precision (with loss
    scaling too): one clipped SGD step on 2 replicas moves the weights as on 1 replica.
    Evaluation runs distributed and gives the single-replica figures."""
    out = run_python(f"""
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
single = tf.distribute.get_strategy()
from training import RECIPES, RunConfig, evaluate, train
from training.data import make_pipeline
from training.trainer import build_model
import keras
recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=5, warmup_steps=1)
try:
    train(RunConfig(recipe=recipe.replace(batch_size=15), output={str(tmp_path / 'bad')!r}),
          mirrored, verbose=False)
except ValueError as error:
    print("ERROR", error)
# One SGD step, lr 1, momentum 0, clipped hard at global norm 1e-3.
step = recipe.replace(optimizer="sgd", momentum=0.0, schedule="linear", warmup_steps=0,
                      learning_rate=1.0, clip_global_norm=1e-3, steps=1)
keras.utils.set_random_seed(0)
start = [w.numpy() for w in build_model(step, 10).weights]
for precision in ("float32", "mixed_float16"):
    moved, results = {{}}, {{}}
    for name, strategy in (("single", single), ("mirrored", mirrored)):
        results[name] = train(RunConfig(recipe=step, output={str(tmp_path)!r} +
                                        f"/{{precision}}-{{name}}", precision=precision,
                                        export=False), strategy, verbose=False)
        moved[name] = np.concatenate([(w.numpy() - w0).ravel() for w, w0 in
                                      zip(results[name]["model"].weights, start)])
    norms = [float(np.linalg.norm(moved[k])) for k in ("single", "mirrored")]
    print("UPDATE", precision, norms[0], norms[1],
          float(np.linalg.norm(moved["single"] - moved["mirrored"])) / norms[0])
result = results["mirrored"]
print("REPLICAS", result["metrics"]["replicas"], "STEPS", result["metrics"]["steps"])
plain = evaluate(result["model"], make_pipeline(result["source"].test, 16, 7))
print("EVAL", result["metrics"]["num_test_examples"], plain["num_examples"],
      abs(result["metrics"]["top1"] - plain["top1"]), abs(result["metrics"]["test_loss"]
                                                          - plain["loss"]))
""")
    assert "ERROR batch size 15 is not divisible by the 2 replicas" in out
    assert "REPLICAS 2 STEPS 1" in out
    updates = {line.split()[1]: [float(v) for v in line.split()[2:]]
               for line in out.splitlines() if line.startswith("UPDATE")}
    for precision in ("float32", "mixed_float16"):
        single, mirrored, difference = updates[precision]
        assert single == pytest.approx(1e-3, rel=0.01), (precision, single)
        assert mirrored == pytest.approx(single, rel=0.01) and difference < 0.02, \
            (precision, updates)
    count, plain_count, top1_gap, loss_gap = [float(v) for v in
                                              out.split("EVAL")[1].split()[:4]]
    assert count == plain_count == 360 and top1_gap == 0 and loss_gap < 1e-4


WORKER = """
import json, os, sys, numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from training import RECIPES, RunConfig, train
recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=6, warmup_steps=2)
result = train(RunConfig(recipe=recipe, output=sys.argv[1], export=False, strategy="multi_worker"),
               strategy, verbose=False)
np.savez(sys.argv[2], *[w.numpy() for w in result["model"].weights])
print("DONE", result["metrics"]["steps"], result["metrics"]["replicas"],
      result["metrics"]["num_test_examples"])
"""


def _free_ports(count):
    import socket
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(argv, log_dir, name):
    """Two worker processes on 127.0.0.1 (TF_CONFIG), output to files in ``log_dir``."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, *[a.format(index=index) for a in argv]], cwd=REPO, env=env,
            stdout=open(log_dir / f"{name}{index}.out", "w"),
            stderr=open(log_dir / f"{name}{index}.err", "w")))
    return procs


def _wait(procs, log_dir, name, timeout=300):
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{name}: workers did not finish in {timeout} s (deadlock)") \
                from None
    return [((log_dir / f"{name}{i}.out").read_text(), (log_dir / f"{name}{i}.err").read_text())
            for i in range(2)]


def test_multi_worker_two_processes_agree_with_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = _start_workers([str(script), str(tmp_path / "run"), str(tmp_path / "w{index}.npz")],
                           tmp_path, "worker")
    for p, (stdout, stderr) in zip(procs, _wait(procs, tmp_path, "worker", 600)):
        assert p.returncode == 0, stderr[-3000:]
        assert "DONE 6 2 360" in stdout
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) > 10
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))  # chief's
    assert not os.path.exists(tmp_path / "run" / ".worker1-scratch")  # scratch removed
    # The same global batches on one process: the same weights (the gradient is averaged
    # over the global batch, whatever the number of workers).
    recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=6, warmup_steps=2)
    alone = train(RunConfig(recipe=recipe, output=str(tmp_path / "alone"), export=False),
                  make_strategy("default"), verbose=False)
    for key, weight in zip(w0.files, alone["model"].weights):
        np.testing.assert_allclose(w0[key], weight.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_sigterm_to_one_worker_stops_both_with_a_checkpoint_then_resume(tmp_path):
    out = tmp_path / "run"
    argv = ["-m", "training", "--strategy", "multi_worker", "--image-size", "16",
            "--steps", "80", "--checkpoint-every", "10", "--output", str(out), "--no-export"]
    procs = _start_workers(argv, tmp_path, "first")
    ckpt_dir = str(out / "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and not (os.path.isdir(ckpt_dir) and
                                          tf.train.latest_checkpoint(ckpt_dir)):
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)  # the non-chief: the chief must save too
    for p, (_stdout, stderr) in zip(procs, _wait(procs, tmp_path, "first", 120)):
        assert p.returncode == 2, stderr[-3000:]
        assert "stopped by a signal at step" in stderr
    stopped_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert 10 <= stopped_at < 80
    procs = _start_workers(["-m", "training", "--resume", "--output", str(out)], tmp_path,
                           "resumed")
    outputs = _wait(procs, tmp_path, "resumed", 300)
    for p, (_stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
    assert f"resumed at step {stopped_at}" in outputs[0][0]
    assert json.load(open(out / "metrics.json"))["steps"] == 80


def _checkpoint_step(ckpt_dir):
    latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _wait_for_checkpoint(proc, ckpt_dir, step, log, timeout=1800):
    """Waits (on the checkpoint file, not on a time) until the run has a checkpoint of at
    least ``step``; fails, showing its log, if the run exits first or never gets there."""
    deadline = time.time() + timeout
    while _checkpoint_step(ckpt_dir) < step:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"no checkpoint of step {step} (run exit code "
                                 f"{proc.returncode}):\n{open(log).read()[-3000:]}")
        time.sleep(0.05)


def test_kill_minus_9_then_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    # 100 steps (4.5 epochs of digits), warm-up and cosine decay both in them; the kill
    # comes after step 40's checkpoint, 60 steps before the end.
    args = ["--image-size", "16", "--steps", "100", "--warmup-steps", "20",
            "--checkpoint-every", "20", "--seed", "0", "--output", out, "--no-export"]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    ckpt_dir = os.path.join(out, "checkpoints")
    _wait_for_checkpoint(proc, ckpt_dir, 40, tmp_path / "first.log")
    proc.send_signal(signal.SIGKILL)  # on the event: the checkpoint of step 40 is there
    assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
    killed_at = _checkpoint_step(ckpt_dir)
    assert 40 <= killed_at < 100
    # Starting again without --resume refuses to touch the run (main, what the console
    # script runs, in this process: the refusal comes before any training).
    from training.cli import main
    assert main(["train", *args]) == 2
    assert "pass --resume to continue it" in capsys.readouterr().err
    resumed = _cli("--resume", "--output", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {killed_at}" in resumed.stdout
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["steps"] == 100
    assert int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1]) == 100
    # Same optimizer state and data order as a run that was never killed: the same weights.
    # That run goes through the same command (the CLI sets TensorFlow's kernel options in its
    # process: an in-process run computes with others, 3e-4 apart after 200 steps).
    alone = str(tmp_path / "alone")
    never_killed = _cli(*args[:-3], "--output", alone, "--no-export")
    assert never_killed.returncode == 0, never_killed.stderr[-3000:]
    import keras
    want_model = keras.saving.load_model(os.path.join(alone, "model.keras"))
    resumed_model = keras.saving.load_model(os.path.join(out, "model.keras"))
    for want, got in zip(want_model.weights, resumed_model.weights):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


def _restored_model(run_dir, recipe, checkpoint):
    from training.trainer import build_model
    model = build_model(recipe, 10)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    return model


def test_nan_guard_keeps_only_a_checkpoint_with_finite_weights_and_logits(tmp_path):
    """The loss of step k is computed before update k: the guard must check the weights a
    checkpoint holds, not only the loss."""
    from training.trainer import TrainingError
    recipe = QUICK.replace(learning_rate=1e30, steps=30, warmup_steps=1, clip_global_norm=0)
    config = RunConfig(recipe=recipe, output=str(tmp_path / "run"), checkpoint_every=1,
                       export=False)
    with pytest.raises(TrainingError, match="the run diverged") as info:
        train(config, make_strategy("default"), verbose=False)
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    assert latest is not None and f"the last good checkpoint, {latest}, is kept" in \
        str(info.value)
    model = _restored_model(tmp_path / "run", recipe, latest)
    for weight in model.weights:
        assert np.all(np.isfinite(weight.numpy())), weight.name
    images = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    assert np.all(np.isfinite(model(images).numpy()))


def test_nan_guard_says_when_no_checkpoint_was_kept(tmp_path):
    from training.trainer import TrainingError
    recipe = QUICK.replace(learning_rate=1e30, steps=30, warmup_steps=0, schedule="linear",
                           clip_global_norm=0)
    config = RunConfig(recipe=recipe, output=str(tmp_path / "run"), checkpoint_every=1,
                       export=False)
    with pytest.raises(TrainingError, match="no checkpoint had been saved yet"):
        train(config, make_strategy("default"), verbose=False)
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints")) is None


def _start_holder(out):
    """A `keras-vit train` process into ``out``, returned once it is training (its run line
    printed, after it took the run directory); its stdout is drained by a thread."""
    import queue
    import threading
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "training", "--image-size", "16",
                             "--batch-size", "16", "--steps", "100000", "--checkpoint-every",
                             "100000", "--output", out, "--no-export"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if lines.get(timeout=max(deadline - time.time(), 0.1)).startswith(
                    "keras-vit train: tiny on digits"):
                return proc
        except queue.Empty:
            break
    proc.kill()
    raise AssertionError("the first run never started training")


def test_two_runs_into_one_output_the_second_is_refused_naming_the_holder(tmp_path):
    """Two real processes: the second `keras-vit train --output R` while the first trains
    into R ends in one line naming the first (pid, host); R stays the first run's. Once the
    holder is killed (-9: its lock left behind), R is free again."""
    import socket
    out = str(tmp_path / "run")
    holder = _start_holder(out)
    try:
        second = _cli("--image-size", "16", "--batch-size", "16", "--steps", "2",
                      "--warmup-steps", "1", "--seed", "2", "--output", out, "--no-export")
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    errors = [line for line in second.stderr.splitlines() if line.startswith("keras-vit")]
    assert second.returncode == 2, second.stderr[-3000:]
    assert errors == [f"keras-vit train: error: --output {out} is in use by another "
                      f"keras-vit train (pid {holder.pid} on host {socket.gethostname()}; "
                      f"lock {os.path.join(out, '.run.lock')}): wait for it to finish or "
                      "choose another --output"], second.stderr[-3000:]
    assert json.load(open(os.path.join(out, "config.json")))["seed"] == 0
    # The killed holder's lock file is still there, with its line: it does not block.
    assert open(os.path.join(out, ".run.lock")).read().startswith(f"{holder.pid} ")
    result = train(RunConfig(recipe=QUICK.replace(steps=2), output=out, export=False),
                   make_strategy("default"), verbose=False)
    assert result["metrics"]["steps"] == 2


def _folder_with_bad_images(root):
    """2 classes of 12 images, 2 of each class corrupt; returns the corrupt paths."""
    rng = np.random.default_rng(0)
    bad = []
    for cls, value in (("cat", 30), ("dog", 220)):
        os.makedirs(root / cls)
        for i in range(10):
            image = np.clip(rng.normal(value, 10, (20, 24, 3)), 0, 255).astype(np.uint8)
            (root / cls / f"{i}.jpg").write_bytes(tf.io.encode_jpeg(image).numpy())
        jpeg = (root / cls / "0.jpg").read_bytes()
        (root / cls / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
        (root / cls / "junk.png").write_bytes(b"not an image")
        bad += [str(root / cls / "cut.jpg"), str(root / cls / "junk.png")]
    return bad


def test_bad_images_are_skipped_counted_named_and_a_resume_stays_bit_exact(tmp_path):
    """20 training images (5 steps of 4 an epoch) and 4 test images, 4 of all corrupt: the
    run finishes, names them all in metrics.json; rewound to step 3 and resumed, it ends
    with the same weights bit for bit; past --max-bad-images it stops with one line."""
    root = tmp_path / "images"
    bad = _folder_with_bad_images(root)
    recipe = QUICK.replace(dataset=f"folder:{root}", batch_size=4, steps=6,
                           crop_area_min=0.5, flip=True)
    config = RunConfig(recipe=recipe, output=str(tmp_path / "run"), checkpoint_every=3,
                       export=False)
    full = train(config, make_strategy("default"), verbose=False)
    skipped = full["metrics"]["skipped_images"]
    assert skipped["count"] == 4 and sorted(skipped["first"]) == sorted(bad)
    with open(os.path.join(config.output, "metrics.json")) as f:
        assert json.load(f)["skipped_images"] == skipped
    assert 0 < full["metrics"]["num_test_examples"] < 6
    expected = [w.numpy() for w in full["model"].weights]
    rewind_run(config.output, 3)
    resumed = train(config, make_strategy("default"), resume=True, verbose=False)
    for want, got in zip(expected, resumed["model"].weights):
        np.testing.assert_array_equal(got.numpy(), want)
    strict = RunConfig(recipe=recipe, output=str(tmp_path / "strict"), export=False,
                       max_bad_images=1)
    with pytest.raises(DataError, match=r"^\d images could not be read or decoded, more "
                                        r"than --max-bad-images 1: .*(cut\.jpg|junk\.png)"):
        train(strict, make_strategy("default"), verbose=False)


def test_an_example_with_label_minus_one_is_not_trained_on():
    """Whatever the pixels of a label -1 example, the step's update is the same."""
    from training.optimizers import make_optimizer
    from training.trainer import build_model, make_train_step
    strategy = make_strategy("default")
    images = random_images(4, 16, 16)
    labels = np.array([0, -1, 1, 2], np.int64)
    results = []
    for fill in (0.0, 255.0):
        keras.utils.set_random_seed(0)
        model = build_model(QUICK, 10)
        optimizer = make_optimizer(QUICK, 10)
        step = make_train_step(model, optimizer, strategy, 4)
        batch = images.copy()
        batch[1] = fill
        loss, correct = step(tf.constant(batch), tf.constant(labels))
        assert np.isfinite(float(loss))
        results.append([w.numpy() for w in model.weights])
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)
