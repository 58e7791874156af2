"""Real (tiny) training runs: data sources, strategies, resume after kill -9, NaN guard."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import REPO, run_python
from training import RECIPES, RunConfig, train
from training.data import DataError, load_source
from training.distribute import make_strategy

# A very small recipe for API-level tests: the demo's model at 16 px, few steps.
QUICK = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=6, warmup_steps=2)


def _cli(*args, env=None, timeout=900):
    full_env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.run([sys.executable, "-m", "training", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_main_job_reaches_95_percent_and_writes_the_run_directory(tmp_path):
    """`keras-vit train` with no arguments: the project's main job, end to end."""
    out = str(tmp_path / "run")
    result = _cli("--output", out)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["top1"] > 0.95, metrics
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert metrics["steps"] == 660 and metrics["examples_per_second"] > 0
    for item in ("config.json", "checkpoints", "logs", "model.keras", "labels.txt"):
        assert os.path.exists(os.path.join(out, item)), item
    assert os.listdir(os.path.join(out, "logs", "train"))  # TensorBoard events
    assert os.path.exists(os.path.join(out, "export", "vit_tiny", "1", "saved_model.pb"))
    assert "verify" in result.stdout and ": OK" in result.stdout
    assert "served prediction for test image 0" in result.stdout
    # keras-vit evaluate on the run directory gives the same accuracy.
    evaluated = subprocess.run([sys.executable, "-m", "training.cli", "evaluate", out],
                               cwd=REPO, capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=REPO))
    assert f"top-1 {metrics['top1']:.4f}" in evaluated.stdout, evaluated.stderr[-2000:]


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


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    out = run_python(f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
from training import RECIPES, RunConfig, train
recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=5, warmup_steps=1)
try:
    train(RunConfig(recipe=recipe.replace(batch_size=15), output={str(tmp_path / 'bad')!r}),
          strategy, verbose=False)
except ValueError as error:
    print("ERROR", error)
result = train(RunConfig(recipe=recipe, output={str(tmp_path / 'run')!r}, export=False),
               strategy, verbose=False)
print("REPLICAS", result["metrics"]["replicas"], "STEPS", result["metrics"]["steps"])
""")
    assert "ERROR batch size 15 is not divisible by the 2 replicas" in out
    assert "REPLICAS 2 STEPS 5" in out


WORKER = """
import json, os, sys, numpy as np
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
from training import RECIPES, RunConfig, train
recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=6, warmup_steps=2)
result = train(RunConfig(recipe=recipe, output=sys.argv[1], export=False, strategy="multi_worker"),
               strategy, verbose=False)
np.savez(sys.argv[2], *[w.numpy() for w in result["model"].weights])
print("DONE", result["metrics"]["steps"], result["metrics"]["replicas"])
"""


def test_multi_worker_two_processes_agree(tmp_path):
    import socket
    ports = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        ports.append(s.getsockname()[1])
        s.close()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "run"), str(tmp_path / f"w{index}.npz")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (stdout, stderr) in zip(procs, outputs):
        assert p.returncode == 0, stderr[-3000:]
        assert "DONE 6 2" in stdout
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) > 10
    for key in w0.files:
        np.testing.assert_array_equal(w0[key], w1[key])
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))  # chief's
    assert not os.path.exists(tmp_path / "run" / ".worker1-ckpt")  # scratch removed


def test_kill_minus_9_then_resume(tmp_path):
    out = str(tmp_path / "run")
    args = ["--image-size", "16", "--steps", "400", "--checkpoint-every", "40",
            "--output", out, "--no-export"]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-m", "training", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = os.path.join(out, "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline:
        latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
        if latest and int(latest.rsplit("-", 1)[1]) >= 80:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert 80 <= killed_at < 400
    # Starting again without --resume refuses to touch the run.
    again = _cli(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = _cli("--resume", "--output", out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed at step {killed_at}" in resumed.stdout
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["steps"] == 400
    assert int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1]) == 400


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path):
    from training.trainer import TrainingError
    recipe = QUICK.replace(learning_rate=1e30, steps=30, warmup_steps=1, clip_global_norm=0)
    config = RunConfig(recipe=recipe, output=str(tmp_path / "run"), checkpoint_every=1,
                       export=False)
    with pytest.raises(TrainingError, match="the run diverged") as info:
        train(config, make_strategy("default"), verbose=False)
    failed_step = int(str(info.value).split("at step ")[1].split(":")[0])
    latest = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    if latest:  # the last checkpoint is from before the failing step
        assert int(latest.rsplit("-", 1)[1]) < failed_step
