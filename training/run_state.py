"""A run's state on disk and in memory: :func:`set_up` decides what is fixed for the run
(:class:`Run`: data, steps, the locked run directory), :func:`create_state` builds the model,
optimizer and their checkpoint (:class:`State`) and restores the newest intact checkpoint on
``--resume``. Run directories are written through ``tf.io.gfile``, so any TensorFlow
filesystem works for them."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Optional

import keras
import tensorflow as tf

from export.run_layout import CONFIG, LOCK, RunLayout
from keras_vit.files import write_text_atomically
from keras_vit.sources import parse_json
from training.data import BadImages, DataError, DataSource, load_source
from training.distribute import worker_info
from training.optimizers import make_optimizer
from training.recipes import check_accumulate
from training.run_config import RunConfig, TrainingError, build_model


@dataclasses.dataclass
class Run:
    """What :func:`set_up` decided: fixed for the whole run."""

    config: RunConfig
    strategy: object
    layout: RunLayout
    source: DataSource
    resume: bool
    verbose: bool
    is_chief: bool
    task_id: int
    steps_per_epoch: int
    total_steps: int
    bad_images: BadImages

    @property
    def recipe(self):
        return self.config.recipe

    @property
    def loss_scaling(self):
        return self.config.precision == "mixed_float16"

    def say(self, text):
        if self.verbose and self.is_chief:
            print(text, flush=True)


@dataclasses.dataclass
class State:
    """What :func:`create_state` built: the model, its optimizer and their checkpoint."""

    model: object
    optimizer: object
    step_var: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    step: int
    average: Optional[object] = None  # training.ema.WeightAverage with --ema-decay


def set_up(config, strategy, resume, source, verbose, held) -> Run:
    """Validates the configuration and the run directory (the chief locks it for the run,
    in ``held``), loads the data."""
    config.validate()
    recipe = config.recipe
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by the "
                         f"{replicas} replicas of the strategy")
    check_accumulate(config.accumulate, recipe.batch_size, replicas)
    is_chief, task_id = worker_info(strategy)
    layout = RunLayout(config.output)
    check_run_directory(layout, resume, config.export)
    if is_chief:
        held.enter_context(lock_run_directory(layout))
        check_run_directory(layout, resume, config.export)  # again, now that it is ours
    keras.config.set_dtype_policy(config.precision)
    keras.utils.set_random_seed(config.seed)  # same initial weights for the same --seed
    source = source or load_source(recipe.dataset, config.data_dir, config.train_split,
                                   config.test_split)
    if source.num_test == 0:
        raise DataError(f"{source.name}: the test split is empty")
    steps_per_epoch = source.num_train // recipe.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {recipe.batch_size} is larger than the "
                         f"{source.num_train} training examples")
    total_steps = recipe.steps or (recipe.epochs or 1) * steps_per_epoch
    return Run(config, strategy, layout, source, resume, verbose, is_chief, task_id,
                steps_per_epoch, total_steps, BadImages(config.max_bad_images))


@contextlib.contextmanager
def lock_run_directory(layout: RunLayout):
    """The run's lock (``export.versions.locked``, the exports' flock): a second run into
    the same directory is refused naming the holder; a killed holder's lock does not block.
    A directory on another filesystem (``gs://``...) cannot be flocked and is not locked."""
    if "://" in layout.root:
        yield
        return
    from export.versions import LockHeld, locked
    os.makedirs(layout.root, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(layout.lock, wait=False))
        except LockHeld as error:
            raise TrainingError(f"--output {layout.root} is in use by another keras-vit train "
                                f"({error.holder}; lock {layout.lock}): wait for it to finish "
                                "or choose another --output") from None
        yield


def check_run_directory(layout: RunLayout, resume: bool, export: bool) -> None:
    """Never overwrite what the user has: another run, or a directory that is not a run."""
    gfile = tf.io.gfile
    if export and "://" in layout.root:
        raise ValueError(f"--output {layout.root}: the TF Serving export is written to the "
                         "local disk only; pass --no-export for a run directory on another "
                         "filesystem (and export a local copy of its model.keras)")
    latest = tf.train.latest_checkpoint(layout.checkpoints) \
        if gfile.isdir(layout.checkpoints) else None
    if resume:
        if not latest:
            raise TrainingError(f"--resume: no checkpoint in {layout.checkpoints}")
        return
    if latest:
        raise TrainingError(f"{layout.root} already holds a run with checkpoints; pass "
                            "--resume to continue it or choose another --output")
    if gfile.exists(layout.root) and not gfile.isdir(layout.root):
        raise TrainingError(f"--output {layout.root} is a file, not a directory")
    if gfile.isdir(layout.root) and set(gfile.listdir(layout.root)) - {LOCK} and \
            not gfile.exists(layout.config):
        raise TrainingError(f"--output {layout.root} exists and is not a keras-vit run "
                            f"directory (no {CONFIG}); choose another --output")


def create_state(run: Run) -> State:
    """Model and optimizer in the strategy's scope, their checkpoint, restored on resume."""
    recipe = run.recipe
    with run.strategy.scope():
        model = build_model(recipe, run.source.num_classes, run.config.weights)
        optimizer = make_optimizer(recipe, run.total_steps)
        if run.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        average = _weight_average(model, recipe.ema_decay)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     **({"ema": average} if average is not None else {}))
    # tf.distribute: every worker saves (collectives), non-chiefs to a scratch directory.
    write_dir = run.layout.checkpoints if run.is_chief else \
        os.path.join(run.layout.scratch(run.task_id), "checkpoints")
    if not run.is_chief and tf.io.gfile.exists(write_dir):
        tf.io.gfile.rmtree(write_dir)  # a stale scratch of an earlier attempt
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=3)
    if run.resume:
        restore(run, checkpoint)
    if run.is_chief:
        tf.io.gfile.makedirs(run.layout.root)
        write_text_atomically(run.layout.config, run.config.to_json())
    state = State(model, optimizer, step_var, checkpoint, manager, int(step_var.numpy()),
                  average)
    run.say(f"keras-vit train: {recipe.model} on {run.source.name} ({run.source.num_train} "
            f"train / {run.source.num_test} test), {run.total_steps} steps of "
            f"{recipe.batch_size}{_extras(run)} on {run.strategy.num_replicas_in_sync} "
            f"replica(s), {run.config.precision}" + (f", resumed at step {state.step}"
                                                     if run.resume else ""))
    return state


def _weight_average(model, decay):
    """The moving average of the weights (``--ema-decay``), or None."""
    if decay is None:
        return None
    from training.ema import WeightAverage
    return WeightAverage(model, decay)


def _extras(run: Run) -> str:
    """The run line's words for --accumulate and --ema-decay."""
    config, text = run.config, ""
    if config.accumulate > 1:
        micro = config.recipe.batch_size // (config.accumulate *
                                             run.strategy.num_replicas_in_sync)
        text += f" ({config.accumulate} micro-batches of {micro} a replica)"
    if config.recipe.ema_decay is not None:
        text += f", EMA of the weights (decay {config.recipe.ema_decay})"
    return text


def restore(run: Run, checkpoint: tf.train.Checkpoint) -> None:
    """Restores the newest checkpoint that reads back whole.

    A damaged one (a truncated ``ckpt-N.data-*``...) is named, and the run goes on from the
    newest earlier checkpoint that restores, saying so: training is a function of the step
    (the data order and augmentation are keyed by seed and position), so the steps after
    it are trained again to the same weights, and saving them overwrites the damaged files.
    With no intact checkpoint left, a TrainingError names the damaged files.
    """
    directory = run.layout.checkpoints
    state = tf.train.get_checkpoint_state(directory)
    prefixes = set(state.all_model_checkpoint_paths if state else [])
    prefixes.add(tf.train.latest_checkpoint(directory))
    prefixes = sorted((p for p in prefixes if p and tf.io.gfile.exists(p + ".index")),
                      key=lambda p: int(p.rsplit("-", 1)[1]), reverse=True)
    damaged = []
    for prefix in prefixes:
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except Exception as error:  # TensorFlow raises IndexError, DataLossError, ...
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
            damaged.append(f"{_checkpoint_files(prefix)} cannot be read ({detail})")
            continue
        if damaged:
            run.say(f"keras-vit train: {'; '.join(damaged)}: resuming from {prefix}, the "
                    "newest intact checkpoint (the steps after it are trained again, to the "
                    "same weights)")
        return
    if not damaged:
        raise TrainingError(f"--resume: no checkpoint in {directory}")
    raise TrainingError(f"--resume: {damaged[0]}; no earlier checkpoint is intact"
                        + (f" ({len(damaged) - 1} more cannot be read)" if len(damaged) > 1
                           else "") + ": start a new run (another --output)")


def _checkpoint_files(prefix: str) -> str:
    """The files of checkpoint ``prefix`` to blame: its data files if its index reads."""
    try:
        tf.train.load_checkpoint(prefix)
    except Exception:  # noqa: BLE001 (any failure to read the index)
        return prefix + ".index"
    return ", ".join(sorted(tf.io.gfile.glob(prefix + ".data-*"))) or prefix


def finished_metrics(run: Run, state: State) -> Optional[dict]:
    """The metrics of a resumed run that had already finished (else None)."""
    if state.step < run.total_steps or not tf.io.gfile.exists(run.layout.metrics):
        return None
    with tf.io.gfile.GFile(run.layout.metrics, "rb") as f:
        metrics = parse_json(f.read(), run.layout.metrics)
    return metrics if isinstance(metrics, dict) and metrics.get("steps") == state.step \
        else None
