"""The training loop: a custom ``strategy.run`` loop that works under every tf.distribute
strategy (Keras 3's ``Model.fit`` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585), with checkpoints that survive a kill, a NaN guard, TensorBoard
logs and the run directory of the design contract.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import keras_vit
from training.data import DataSource, load_source, make_pipeline
from training.distribute import worker_info
from training.recipes import TINY_MODEL, Recipe, make_optimizer

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, or a run directory that would be overwritten)."""


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs; written to ``config.json`` and read back by ``--resume``."""

    recipe: Recipe
    output: str
    strategy: str = "auto"
    precision: str = "float32"
    jit_compile: bool = False
    weights: Optional[str] = None
    data_dir: Optional[str] = None
    train_split: Optional[str] = None
    test_split: Optional[str] = None
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    export: bool = True

    def to_json(self):
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        data = json.loads(text)
        data["recipe"] = Recipe(**data["recipe"])
        return cls(**data)


def build_model(recipe: Recipe, num_classes: int, weights: Optional[str] = None):
    """The recipe's model with a fresh (zero) head for ``num_classes``."""
    common = dict(image_size=recipe.image_size, num_classes=num_classes,
                  dropout_rate=recipe.dropout_rate)
    if recipe.model == "tiny":
        return keras_vit.ViT(**TINY_MODEL, **common, weights=weights, name="vit_tiny")
    if recipe.model not in keras_vit.VARIANTS:
        raise ValueError(f"unknown model {recipe.model!r}: expected 'tiny' or one of "
                         f"{', '.join(sorted(keras_vit.VARIANTS))}")
    return getattr(keras_vit, recipe.model)(weights=weights, **common)


class _StopSignal:
    """SIGTERM/SIGINT (preemption, Ctrl-C): finish the step, checkpoint, stop."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def _top_k_correct(labels, logits, k):
    """How many of the labels are among the ``k`` predicted classes (a tie is no hit)."""
    return tf.reduce_sum(tf.cast(keras_vit.metrics.top_k_hits(labels, logits, k), tf.float32))


def make_train_step(model, optimizer, strategy, global_batch_size: int,
                    clip_global_norm: Optional[float] = None, loss_scaling: bool = False,
                    jit_compile: bool = False):
    """The distributed training step ``(images, labels) -> (mean loss, top-1 correct)``.

    Loss averaged over the global batch; with ``clip_global_norm`` the gradient is clipped
    by its global (all-replica) norm, as the paper does; with ``loss_scaling`` the optimizer
    is a ``LossScaleOptimizer`` (which then also does any clipping itself).
    """
    replicas = strategy.num_replicas_in_sync

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                       from_logits=True)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if clip_global_norm:
            # Keras's optimizer sums gradients over replicas again, hence the division.
            context = tf.distribute.get_replica_context()
            if replicas > 1:
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            grads, _ = tf.clip_by_global_norm(grads, clip_global_norm)
            if replicas > 1:
                grads = [g / replicas for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss, _top_k_correct(labels, logits, 1)

    @tf.function(jit_compile=jit_compile or None)
    def replica_step(images, labels):
        return step_fn(images, labels)

    @tf.function
    def train_step(images, labels):
        loss, correct = strategy.run(replica_step, args=(images, labels))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                strategy.reduce(tf.distribute.ReduceOp.SUM, correct, axis=None))

    return train_step


def evaluate(model, dataset) -> dict:
    """Top-1 / top-5 accuracy and mean loss of ``model`` on a batched dataset."""
    @tf.function
    def step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(
            labels, logits, from_logits=True))
        top1, top5 = _top_k_correct(labels, logits, 1), _top_k_correct(labels, logits, 5)
        return loss, top1, top5, tf.cast(tf.shape(labels)[0], tf.float32)

    totals = np.zeros(4)
    for images, labels in dataset:
        totals += np.array([float(t) for t in step(images, labels)])
    count = max(totals[3], 1.0)
    return {"top1": totals[1] / count, "top5": totals[2] / count, "loss": totals[0] / count,
            "num_examples": int(totals[3])}


def train(config: RunConfig, strategy, resume: bool = False, source: DataSource = None,
          verbose: bool = True) -> dict:
    """Runs (or resumes) a training run.

    Returns ``{"metrics": ..., "model": ..., "source": ...}``; the metrics are those written
    to ``metrics.json``. The global dtype policy is restored afterwards.
    """
    previous_policy = keras.config.dtype_policy()
    try:
        return _train(config, strategy, resume, source, verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(config, strategy, resume, source, verbose):
    recipe = config.recipe
    if config.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {config.precision!r}: expected one of "
                         f"{', '.join(PRECISIONS)}")
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by the "
                         f"{replicas} replicas of the strategy")
    is_chief, task_id = worker_info(strategy)
    ckpt_dir = os.path.join(config.output, "checkpoints")
    if os.path.isdir(ckpt_dir) and tf.train.latest_checkpoint(ckpt_dir) and not resume:
        raise TrainingError(f"{config.output} already holds a run with checkpoints; pass "
                            "--resume to continue it or choose another --output")
    if resume and not tf.train.latest_checkpoint(ckpt_dir):
        raise TrainingError(f"--resume: no checkpoint in {ckpt_dir}")

    keras.config.set_dtype_policy(config.precision)
    keras.utils.set_random_seed(config.seed)  # same initial weights for the same --seed
    source = source or load_source(recipe.dataset, config.data_dir, config.train_split,
                                   config.test_split)
    steps_per_epoch = source.num_train // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {recipe.batch_size} is larger than the "
                         f"{source.num_train} training examples")
    total_steps = recipe.steps or (recipe.epochs or 1) * steps_per_epoch
    loss_scaling = config.precision == "mixed_float16"

    with strategy.scope():
        model = build_model(recipe, source.num_classes, config.weights)
        optimizer = make_optimizer(recipe, total_steps, clip_in_optimizer=loss_scaling)
        if loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

    if is_chief:
        os.makedirs(config.output, exist_ok=True)
        with open(os.path.join(config.output, "config.json"), "w") as f:
            f.write(config.to_json())
    # tf.distribute: every worker saves (collectives), non-chiefs to a scratch directory.
    write_dir = ckpt_dir if is_chief else os.path.join(config.output, f".worker{task_id}-ckpt")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=3)
    if resume:
        checkpoint.restore(tf.train.latest_checkpoint(ckpt_dir)).assert_existing_objects_matched()
    step = int(step_var.numpy())
    if verbose and is_chief:
        print(f"keras-vit train: {recipe.model} on {source.name} ({source.num_train} train / "
              f"{source.num_test} test), {total_steps} steps of {recipe.batch_size} on "
              f"{replicas} replica(s), {config.precision}"
              + (f", resumed at step {step}" if resume else ""), flush=True)

    train_step = make_train_step(model, optimizer, strategy, recipe.batch_size,
                                 clip_global_norm=None if loss_scaling else recipe.clip_global_norm,
                                 loss_scaling=loss_scaling, jit_compile=config.jit_compile)

    log_dir = os.path.join(config.output, "logs", "train")
    writer = tf.summary.create_file_writer(log_dir) if is_chief else tf.summary.create_noop_writer()
    progbar = keras.utils.Progbar(total_steps, stateful_metrics=["loss", "accuracy",
                                                                 "examples/s"],
                                  verbose=1 if (verbose and is_chief) else 0)
    step_times, window = [], {"loss": 0.0, "correct": 0.0, "n": 0}
    start_wall = time.time()
    stopped_by = None
    with _StopSignal() as stop:
        while step < total_steps and stopped_by is None:
            epoch, offset = divmod(step, steps_per_epoch)
            ds = make_pipeline(source.train, recipe.image_size, recipe.batch_size,
                               training=True, crop_area_min=recipe.crop_area_min,
                               flip=recipe.flip, seed=config.seed + epoch).skip(offset)
            for images, labels in strategy.experimental_distribute_dataset(ds):
                t0 = time.perf_counter()
                loss, correct = train_step(images, labels)
                loss = float(loss)
                step_times.append(time.perf_counter() - t0)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss became {loss} at step {step + 1}: the run diverged (try a lower "
                        f"--learning-rate). The last good checkpoint is kept in {ckpt_dir}")
                step += 1
                window["loss"] += loss
                window["correct"] += float(correct)
                window["n"] += 1
                if step % config.log_every == 0 or step == total_steps:
                    rate = recipe.batch_size / np.median(step_times[-config.log_every:])
                    acc = window["correct"] / (window["n"] * recipe.batch_size)
                    progbar.update(step, [("loss", window["loss"] / window["n"]),
                                          ("accuracy", acc), ("examples/s", rate)])
                    with writer.as_default(step=step):
                        tf.summary.scalar("loss", window["loss"] / window["n"])
                        tf.summary.scalar("accuracy", acc)
                        tf.summary.scalar("examples_per_second", rate)
                        tf.summary.scalar("learning_rate", float(optimizer.learning_rate))
                    window = {"loss": 0.0, "correct": 0.0, "n": 0}
                if step % config.checkpoint_every == 0 or step == total_steps or stop.received:
                    step_var.assign(step)
                    manager.save(checkpoint_number=step)
                if stop.received:
                    stopped_by = stop.received
                    break
                if step >= total_steps:
                    break
    writer.flush()
    if not is_chief:
        shutil.rmtree(write_dir, ignore_errors=True)
    if stopped_by is not None:
        raise TrainingError(f"stopped by signal {stopped_by} at step {step}; checkpoint "
                            f"saved, continue with --resume --output {config.output}")

    test_ds = make_pipeline(source.test, recipe.image_size, recipe.batch_size, training=False)
    results = evaluate(model, test_ds)
    examples_per_second = (recipe.batch_size / float(np.median(step_times))
                           if step_times else None)
    metrics = {
        "top1": results["top1"], "top5": results["top5"], "test_loss": results["loss"],
        "num_test_examples": results["num_examples"], "steps": step,
        "examples_per_second": examples_per_second,
        "wall_time_s": time.time() - start_wall, "dataset": source.name,
        "model": recipe.model, "recipe": recipe.name, "strategy": config.strategy,
        "replicas": replicas, "precision": config.precision,
    }
    if is_chief:
        _write_outputs(config, model, source, metrics, verbose)
    return {"metrics": metrics, "model": model, "source": source}


def _write_outputs(config, model, source, metrics, verbose):
    with open(os.path.join(config.output, "labels.txt"), "w") as f:
        f.write("\n".join(source.labels) + "\n")
    model.save(os.path.join(config.output, "model.keras"))
    if config.export:
        from export import export_saved_model
        metrics["export"] = export_saved_model(
            model, os.path.join(config.output, "export"), name=model.name,
            labels=source.labels)
    with open(os.path.join(config.output, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    if verbose:
        print(f"test top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
              f"({metrics['num_test_examples']} examples), {metrics['steps']} steps, "
              f"{metrics['examples_per_second']:.1f} examples/s; run directory "
              f"{config.output}" + (f", export {metrics['export']}" if "export" in metrics
                                    else ""), flush=True)
