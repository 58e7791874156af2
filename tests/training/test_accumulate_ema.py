"""Gradient accumulation (``--accumulate K``) and the moving average of the weights
(``--ema-decay D``): real (tiny) runs on digits."""
import dataclasses
import json
import os

import keras
import numpy as np
import tensorflow as tf

from tests.conftest import run_python
from tests.training.conftest import rewind_run
from training import RECIPES, RunConfig, train
from training.cli import main
from training.distribute import make_strategy
from training.run_config import build_model

# Plain SGD (an update proportional to the gradient: a gradient off by any factor shows) at a
# learning rate that moves the weights visibly in three steps; no dropout, no augmentation.
SGD = dataclasses.replace(RECIPES["demo"].replace(
    image_size=16, batch_size=16, steps=3, optimizer="sgd", momentum=0.0, schedule="linear",
    warmup_steps=0, learning_rate=0.5), clip_global_norm=None)  # (.replace keeps on None)


def test_accumulated_steps_equal_the_unaccumulated_ones_on_one_and_two_replicas(tmp_path):
    """Three SGD steps with --accumulate 4 move the weights as without it: float32 on one
    replica and on 2 logical CPUs (MirroredStrategy, with --ema-decay and the gradient
    clipped hard after the all-reduce: a clip of each micro-batch would differ), and under
    mixed_float16 (loss scaling). The difference is measured against the update itself,
    not the weights."""
    out = run_python(f"""
import dataclasses, numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from training import RunConfig, train
from training.recipes import Recipe
from training.run_config import build_model
strategies = {{"single": tf.distribute.get_strategy(),
              "mirrored": tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])}}
sgd = {SGD!r}
keras.utils.set_random_seed(0)
start = np.concatenate([w.numpy().ravel() for w in build_model(sgd, 10).weights])
# (the mirrored run also averages its weights: the average is linear in them, so it too is
# equal, and the EMA update runs on two devices; one run for the clip and the average: each
# train() costs its tracing, evaluation and save, whatever the step count)
cases = [("single", "float32", None, None), ("mirrored", "float32", 1e-3, 0.5),
         ("single", "mixed_float16", None, None)]
for strategy, precision, clip, ema in cases:
    moved = {{}}
    for k in (1, 4):
        output = {str(tmp_path)!r} + f"/{{strategy}}-{{precision}}-{{clip}}-{{k}}"
        recipe = dataclasses.replace(sgd, clip_global_norm=clip, ema_decay=ema)
        result = train(RunConfig(recipe=recipe, output=output,
                                 precision=precision, export=False, accumulate=k),
                       strategies[strategy], verbose=False)
        assert result["metrics"]["steps"] == 3 and result["metrics"]["accumulate"] == k
        moved[k] = np.concatenate([w.numpy().ravel() for w in result["model"].weights]) - start
    update = float(np.linalg.norm(moved[1]))
    print("CASE", strategy, precision, clip, update,
          float(np.linalg.norm(moved[4] - moved[1])) / update)
""")
    cases = [line.split()[1:] for line in out.splitlines() if line.startswith("CASE")]
    print(out)  # the measured differences, shown with pytest -rP
    assert len(cases) == 3, out
    for strategy, precision, clip, update, difference in cases:
        moved_enough = 1e-4 if clip != "None" else 0.1  # a clipped update is at most 1e-3
        assert float(update) > moved_enough, (strategy, precision, clip, update)
        bound = 1e-5 if precision == "float32" else 1e-2
        assert float(difference) < bound, (strategy, precision, clip, difference)


def test_accumulate_must_split_the_batch_and_a_resume_cannot_change_it(tmp_path, capsys):
    for flags, message in ((["--accumulate", "3"], "batch size 64 does not split into 3"),
                           (["--accumulate", "0"], "accumulate must be a positive integer"),
                           (["--ema-decay", "1.5"], "ema-decay must be a number in (0, 1)")):
        assert main(["train", *flags, "--output", str(tmp_path / "never")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def _weights(recipe, prefix):
    """The raw model weights in checkpoint ``prefix``, restored into a fresh model."""
    model = build_model(recipe, 10)
    tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
    return [w.numpy() for w in model.weights]


def test_ema_weights_are_checkpointed_resumed_bit_exactly_saved_and_served(tmp_path, capsys):
    """--ema-decay 0.5 over three steps: model.keras holds 0.5^3 w0 + 0.5 (0.25 w1 + 0.5 w2
    + w3), computed here from the raw weights of the checkpoints; the export serves it;
    rewound to step 2 and resumed (through the CLI: config.json keeps the decay), the run
    ends with the same model bit for bit."""
    recipe = SGD.replace(optimizer="adamw", learning_rate=0.05, ema_decay=0.5)
    out = str(tmp_path / "run")
    result = train(RunConfig(recipe=recipe, output=out, checkpoint_every=1), make_strategy(),
                   verbose=False)
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["ema"]["decay"] == 0.5 and metrics["ema"]["saved_model"] == "ema"
    assert set(metrics["ema"]["raw_weights"]) == {"top1", "top5", "test_loss"}
    keras.utils.set_random_seed(0)
    history = [[w.numpy() for w in build_model(recipe, 10).weights]]
    history += [_weights(recipe, os.path.join(out, "checkpoints", f"ckpt-{step}"))
                for step in (1, 2, 3)]
    expected = [sum(weight * share for weight, share in zip(each, (0.125, 0.125, 0.25, 0.5)))
                for each in zip(*history)]
    saved = keras.saving.load_model(os.path.join(out, "model.keras"))
    gaps = [float(np.abs(w.numpy() - raw).max()) for w, raw in zip(saved.weights, history[3])]
    assert max(gaps) > 1e-2  # the saved model is not the raw weights...
    for want, got in zip(expected, saved.weights):  # ...but their average
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)

    from export.client import predict_saved_model
    from export.saved_model import keras_probabilities
    from training.data import load_digits
    images = [tf.io.encode_png(tf.cast(image, tf.uint8)).numpy()
              for image, _ in load_digits().test.take(8)]
    served = np.array([row["scores"][0] for row in predict_saved_model(metrics["export"],
                                                                       images)])
    ema_top = keras_probabilities(saved, images).max(-1)
    raw_model = build_model(recipe, 10)
    for weight, value in zip(raw_model.weights, history[3]):
        weight.assign(value)
    raw_top = keras_probabilities(raw_model, images).max(-1)
    np.testing.assert_allclose(served, ema_top, rtol=1e-4)
    assert float(np.abs(raw_top - ema_top).max()) > 1e-2

    rewind_run(out, 2)
    for flag in (["--ema-decay", "0.9"], ["--accumulate", "2"]):
        assert main(["train", "--resume", "--output", out, *flag]) == 2
        assert f"cannot change {flag[0]}" in capsys.readouterr().err
    assert main(["train", "--resume", "--output", out, "--no-export"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    resumed = keras.saving.load_model(os.path.join(out, "model.keras"))
    for want, got in zip(result["model"].weights, resumed.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    assert json.load(open(os.path.join(out, "metrics.json")))["ema"]["decay"] == 0.5
