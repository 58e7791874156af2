"""The training loop: a custom ``strategy.run`` loop that works under every tf.distribute
strategy (Keras 3's ``Model.fit`` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585), with checkpoints that survive a kill, a NaN guard, TensorBoard
logs and the run directory of the design contract (``export/run_layout.py``).

A run is four named steps: :func:`_set_up` (validate, choose the data), :func:`_create_state`
(model, optimizer, checkpoint, restore), :func:`_train_loop` and :func:`_finish` (distributed
evaluation, model, export, metrics). Run directories are written through ``tf.io.gfile``, so
any TensorFlow filesystem works for them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import keras_vit
from export.progress import Progress
from export.run_layout import CONFIG, LOCK, RunLayout, fits_labels_txt, labels_json
from keras_vit.files import write_atomically, write_text_atomically
from keras_vit.sources import parse_json
from training.data import (DEFAULT_MAX_BAD_IMAGES, BadImages, DataError, DataSource,
                           load_source, make_eval_pipeline, make_train_pipeline)
from training.distribute import worker_info
from training.optimizers import make_optimizer
from training.recipes import PRECISIONS, TINY_MODEL, Recipe


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
    max_bad_images: int = DEFAULT_MAX_BAD_IMAGES

    def validate(self) -> "RunConfig":
        """Raises ValueError naming the first setting no run can use."""
        self.recipe.validate()
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        for name in ("checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer "
                                 f"(got {value!r})")
        if not isinstance(self.max_bad_images, int) or self.max_bad_images < 0:
            raise ValueError("max-bad-images must be a non-negative integer "
                             f"(got {self.max_bad_images!r})")
        keras_vit.variants.check_fits(  # --image-size 100000: refused before anything is built
            model_architecture(self.recipe.model), self.recipe.image_size, num_prefix_tokens=0,
            activation_bytes=2 if "16" in self.precision else 4)
        return self

    def to_json(self):
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text, source: str = CONFIG):
        """Parses ``text``; errors (ValueError) name ``source`` and the offending key."""
        data = parse_json(text, source)
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            raise ValueError(f"{source}: expected a run configuration with a 'recipe' object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)}) + sorted(
            f"recipe.{k}" for k in set(data["recipe"]) -
            {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (written by "
                             "another version of keras-vit?)")
        _check_field_types(cls, data, source)
        _check_field_types(Recipe, data["recipe"], source, "recipe.")
        try:
            data["recipe"] = Recipe(**data["recipe"])
            config = cls(**data)
        except TypeError as error:  # a missing key
            raise ValueError(f"{source}: {error}") from None
        try:
            return config.validate()
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


# What a field of config.json may hold, by its declared type ("Optional[...]": also null).
_FIELD_KINDS = {"str": ((str,), "a string"), "bool": ((bool,), "true or false"),
                "int": ((int,), "an integer"), "float": ((int, float), "a number")}


def _check_field_types(cls, data: dict, source: str, prefix: str = "") -> None:
    """Every field of ``data`` holds a value of the type ``cls`` declares for it (a
    config.json edited by hand: ``"crop_area_min": "abc"`` would fail deep in tf.image)."""
    for field in dataclasses.fields(cls):
        declared = str(field.type)
        if field.name not in data or declared not in _FIELD_KINDS and \
                not declared.startswith("Optional["):
            continue
        optional = declared.startswith("Optional[")
        types, need = _FIELD_KINDS[declared[len("Optional["):-1] if optional else declared]
        value = data[field.name]
        if value is None and optional:
            continue
        if value is None or not isinstance(value, types) or \
                (isinstance(value, bool) and bool not in types):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ValueError(f"{source}: field {prefix}{field.name} must be {need}"
                             f"{' or null' if optional else ''}, got {shown}")


def load_run_config(run_dir: str) -> RunConfig:
    """The RunConfig of an existing run directory (for ``--resume``)."""
    path = RunLayout(run_dir).config
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--resume: {path} not found (not a keras-vit run directory)")
    with tf.io.gfile.GFile(path, "rb") as f:
        config = RunConfig.from_json(f.read(), source=path)
    config.output = run_dir
    return config


def model_architecture(model: str) -> keras_vit.ViTConfig:
    """The architecture of a recipe's ``model``: ``"tiny"`` or a variant name."""
    if model == "tiny":
        return keras_vit.ViTConfig(**TINY_MODEL)
    if model not in keras_vit.VARIANTS:
        raise ValueError(f"unknown model {model!r}: expected 'tiny' or one of "
                         f"{', '.join(sorted(keras_vit.VARIANTS))}")
    return keras_vit.VARIANTS[model]


def build_model(recipe: Recipe, num_classes: int, weights: Optional[str] = None):
    """The recipe's model with a fresh (zero) head for ``num_classes``."""
    common = dict(image_size=recipe.image_size, num_classes=num_classes,
                  dropout_rate=recipe.dropout_rate)
    model_architecture(recipe.model)
    if recipe.model == "tiny":
        return keras_vit.ViT(**TINY_MODEL, **common, weights=weights, name="vit_tiny")
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
    """How many of the labels are among the ``k`` predicted classes (a tie is no hit); a
    label -1 (an image that could not be read) is no hit."""
    hits = keras_vit.metrics.top_k_hits(tf.maximum(labels, 0), logits, k)
    return tf.reduce_sum(tf.cast(tf.logical_and(hits, labels >= 0), tf.float32))


def make_train_step(model, optimizer, strategy, global_batch_size: int,
                    clip_global_norm: Optional[float] = None, loss_scaling: bool = False,
                    jit_compile: bool = False):
    """The distributed training step ``(images, labels) -> (mean loss, top-1 correct)``.

    Loss averaged over the global batch; with ``clip_global_norm`` the gradient is clipped
    by its global norm after the all-reduce, as the paper does, in every precision; with
    ``loss_scaling`` the optimizer is a ``LossScaleOptimizer`` and the scaled gradient is
    clipped at the scaled threshold (the same clip; a non-finite gradient stays non-finite,
    so the optimizer still skips that step and lowers the scale).
    """
    replicas = strategy.num_replicas_in_sync

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            per_example = keras.losses.sparse_categorical_crossentropy(
                tf.maximum(labels, 0), logits, from_logits=True)
            # Label -1: an image that could not be read (training.data.BadImages), in its
            # place so that batches stay a function of (seed, step); it adds nothing.
            per_example = tf.where(labels >= 0, per_example, tf.zeros_like(per_example))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            scaled = optimizer.scale_loss(loss) if loss_scaling else loss
        grads = tape.gradient(scaled, model.trainable_variables)
        if clip_global_norm:
            # Keras's optimizer sums gradients over replicas again, hence the division.
            context = tf.distribute.get_replica_context()
            if replicas > 1:
                grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            threshold = clip_global_norm
            if loss_scaling:
                threshold = clip_global_norm * tf.cast(optimizer.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, threshold)
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


def _evaluation_sums(model, images, labels):
    """(summed loss, top-1 hits, top-5 hits, count) of a batch; label -1 marks padding."""
    logits = tf.cast(model(images, training=False), tf.float32)
    keep = labels >= 0
    labels, logits = tf.boolean_mask(labels, keep), tf.boolean_mask(logits, keep)
    loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                      from_logits=True))
    return (loss, _top_k_correct(labels, logits, 1), _top_k_correct(labels, logits, 5),
            tf.cast(tf.shape(labels)[0], tf.float32))


def evaluate(model, dataset, strategy=None) -> dict:
    """Top-1 / top-5 accuracy and mean loss of ``model`` on a batched dataset (with
    ``strategy``: a distributed one, each replica evaluating its share)."""
    strategy = strategy or tf.distribute.get_strategy()

    @tf.function
    def step(images, labels):
        sums = strategy.run(lambda x, y: _evaluation_sums(model, x, y), args=(images, labels))
        return tf.stack([strategy.reduce(tf.distribute.ReduceOp.SUM, s, axis=None)
                         for s in sums])

    totals = tf.zeros([4])
    progress = Progress(unit="batch")  # shown on a terminal
    for images, labels in dataset:
        totals += step(images, labels)  # summed on the device: one host sync at the end
        progress.advance()
    progress.close()
    loss, top1, top5, count = (float(t) for t in totals.numpy())
    count = max(count, 1.0)
    return {"top1": top1 / count, "top5": top5 / count, "loss": loss / count,
            "num_examples": int(totals[3])}


def train(config: RunConfig, strategy, resume: bool = False, source: DataSource = None,
          verbose: bool = True) -> dict:
    """Runs (or resumes) a training run.

    Returns ``{"metrics": ..., "model": ..., "source": ...}``; the metrics are those written
    to ``metrics.json``. The global dtype policy is restored afterwards.
    """
    from keras_vit.runtime import FROZEN_WEIGHTS_VARIABLE, weights_assumed_frozen
    if weights_assumed_frozen():
        raise TrainingError(f"{FROZEN_WEIGHTS_VARIABLE} is set in the environment: oneDNN "
                            "would keep computing with the weights of the first step; unset "
                            "it for training (it is for serving only)")
    previous_policy = keras.config.dtype_policy()
    try:
        return _train(config, strategy, resume, source, verbose)
    finally:
        keras.config.set_dtype_policy(previous_policy)


@dataclasses.dataclass
class _Run:
    """What :func:`_set_up` decided: fixed for the whole run."""

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
class _State:
    """What :func:`_create_state` built: the model, its optimizer and their checkpoint."""

    model: object
    optimizer: object
    step_var: tf.Variable
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    step: int


def _train(config, strategy, resume, source, verbose):
    with contextlib.ExitStack() as held:
        run = _set_up(config, strategy, resume, source, verbose, held)
        return _run(run)


def _run(run: _Run) -> dict:
    state = _create_state(run)
    if state.step > run.total_steps:
        raise ValueError(f"the run in {run.layout.root} is at step {state.step}, beyond the "
                         f"{run.total_steps} steps asked: --steps/--epochs can only lengthen it")
    finished = _finished_metrics(run, state)
    if finished is not None:
        run.say(f"keras-vit train: {run.layout.root} already finished at step {state.step}; "
                "nothing to do")
        return {"metrics": finished, "model": state.model, "source": run.source,
                "already_finished": True}
    loop = _train_loop(run, state)
    return _finish(run, state, loop)


def _set_up(config, strategy, resume, source, verbose, held) -> _Run:
    """Validates the configuration and the run directory (the chief locks it for the run,
    in ``held``), loads the data."""
    config.validate()
    recipe = config.recipe
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by the "
                         f"{replicas} replicas of the strategy")
    is_chief, task_id = worker_info(strategy)
    layout = RunLayout(config.output)
    _check_run_directory(layout, resume, config.export)
    if is_chief:
        held.enter_context(_lock_run_directory(layout))
        _check_run_directory(layout, resume, config.export)  # again, now that it is ours
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
    return _Run(config, strategy, layout, source, resume, verbose, is_chief, task_id,
                steps_per_epoch, total_steps, BadImages(config.max_bad_images))


@contextlib.contextmanager
def _lock_run_directory(layout: RunLayout):
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


def _check_run_directory(layout: RunLayout, resume: bool, export: bool) -> None:
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


def _create_state(run: _Run) -> _State:
    """Model and optimizer in the strategy's scope, their checkpoint, restored on resume."""
    recipe = run.recipe
    with run.strategy.scope():
        model = build_model(recipe, run.source.num_classes, run.config.weights)
        optimizer = make_optimizer(recipe, run.total_steps)
        if run.loss_scaling:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
        step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var)
    # tf.distribute: every worker saves (collectives), non-chiefs to a scratch directory.
    write_dir = run.layout.checkpoints if run.is_chief else \
        os.path.join(run.layout.scratch(run.task_id), "checkpoints")
    if not run.is_chief and tf.io.gfile.exists(write_dir):
        tf.io.gfile.rmtree(write_dir)  # a stale scratch of an earlier attempt
    manager = tf.train.CheckpointManager(checkpoint, write_dir, max_to_keep=3)
    if run.resume:
        _restore(run, checkpoint)
    if run.is_chief:
        tf.io.gfile.makedirs(run.layout.root)
        write_text_atomically(run.layout.config, run.config.to_json())
    state = _State(model, optimizer, step_var, checkpoint, manager, int(step_var.numpy()))
    run.say(f"keras-vit train: {recipe.model} on {run.source.name} ({run.source.num_train} "
            f"train / {run.source.num_test} test), {run.total_steps} steps of "
            f"{recipe.batch_size} on {run.strategy.num_replicas_in_sync} replica(s), "
            f"{run.config.precision}" + (f", resumed at step {state.step}" if run.resume
                                         else ""))
    return state


def _restore(run: _Run, checkpoint: tf.train.Checkpoint) -> None:
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


def _finished_metrics(run: _Run, state: _State) -> Optional[dict]:
    """The metrics of a resumed run that had already finished (else None)."""
    if state.step < run.total_steps or not tf.io.gfile.exists(run.layout.metrics):
        return None
    with tf.io.gfile.GFile(run.layout.metrics, "rb") as f:
        metrics = parse_json(f.read(), run.layout.metrics)
    return metrics if isinstance(metrics, dict) and metrics.get("steps") == state.step \
        else None


class _Stopped(Exception):
    """Every worker has saved a checkpoint at the same step after a stop signal."""


class _Guard:
    """Saves only checkpoints that hold finite weights giving finite logits.

    The loss of step k comes from the weights before update k, so a finite loss does not
    clear the weights a checkpoint would hold: before each save, a forward pass on the last
    batch (and a check of every weight and optimizer slot) does.
    """

    def __init__(self, run: _Run, state: _State):
        self.run, self.state = run, state
        strategy, model, optimizer = run.strategy, state.model, state.optimizer
        floats = [v for v in list(model.weights) + list(optimizer.variables)
                  if tf.as_dtype(v.dtype).is_floating]

        def replica_bad(images, labels):
            logits = tf.cast(model(images, training=False), tf.float32)
            finite = [tf.reduce_all(tf.math.is_finite(logits))]
            finite += [tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(v)))
                       for v in floats]
            return 1.0 - tf.cast(tf.reduce_all(tf.stack(finite)), tf.float32)

        @tf.function
        def bad(images, labels):
            return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                   strategy.run(replica_bad, args=(images, labels)), axis=None)

        self._bad = bad
        self._saved = None

    def diverged(self, step, what):
        latest = tf.train.latest_checkpoint(self.run.layout.checkpoints) \
            if tf.io.gfile.isdir(self.run.layout.checkpoints) else None
        kept = (f"the last good checkpoint, {latest}, is kept" if latest else
                "no checkpoint had been saved yet")
        return TrainingError(f"{what} at step {step}: the run diverged (try a lower "
                         f"--learning-rate); {kept}")

    def save(self, step, batch):
        if step == self._saved:
            return
        if float(self._bad(*batch)) > 0:
            raise self.diverged(step, "the weights give non-finite outputs")
        self.state.step_var.assign(step)
        self.state.manager.save(checkpoint_number=step)
        self._saved = step


class _Preemption:
    """Stops every worker at the same step with a checkpoint on SIGTERM/SIGINT.

    One process: its own signal. Several workers: the signal of any one of them, agreed
    through TensorFlow's ``PreemptionCheckpointHandler`` (coordination service), so that the
    others do not block at the next collective.
    """

    def __init__(self, run: _Run, stop: _StopSignal, save):
        self.stop, self.save, self.handler = stop, save, None
        resolver = getattr(run.strategy, "cluster_resolver", None)
        if resolver is not None and _num_workers(resolver) > 1:
            def exit_fn():
                raise _Stopped()

            self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                resolver, tf.train.Checkpoint(),
                checkpoint_dir=os.path.join(run.layout.scratch(run.task_id), "preemption"),
                termination_config=tf.distribute.experimental.TerminationConfig(
                    termination_watcher_fn=lambda: stop.received is not None,
                    exit_fn=exit_fn, grace_period=0, save_fn=lambda: save()))

    def check(self):
        """After each step: on a (cluster-wide) stop, save and raise _Stopped."""
        if self.handler is not None:
            self.handler.save_checkpoint_if_preempted()
        elif self.stop.received is not None:
            self.save()
            raise _Stopped()


def _num_workers(resolver) -> int:
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, [])) for job in ("chief", "worker"))


class _Window:
    """The steps since the last log: losses stay on the device until :meth:`flush`."""

    def __init__(self, step):
        self.start_step, self.start_time = step, time.perf_counter()
        self.losses, self.corrects = [], []

    def add(self, loss, correct):
        self.losses.append(loss)
        self.corrects.append(correct)

    def flush(self, guard: _Guard, batch_size: int):
        """(mean loss, accuracy, examples/s) of the window; raises on a non-finite loss."""
        losses = tf.stack(self.losses).numpy()  # the one host sync of the window
        elapsed = time.perf_counter() - self.start_time
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            raise guard.diverged(self.start_step + int(bad[0]) + 1,
                                 f"loss became {losses[bad[0]]}")
        correct = float(tf.add_n(self.corrects))
        n = len(losses)
        return float(losses.mean()), correct / (n * batch_size), n * batch_size / elapsed


def _distributed_epoch(run: _Run, epoch: int, first_step: int):
    """The steps ``first_step..steps_per_epoch`` of ``epoch``, each worker its share."""
    recipe, strategy = run.recipe, run.strategy

    def dataset_fn(context):
        return make_train_pipeline(
            run.source.train, recipe.image_size,
            context.get_per_replica_batch_size(recipe.batch_size), seed=run.config.seed + epoch,
            crop_area_min=recipe.crop_area_min, flip=recipe.flip, read=run.source.read,
            skip_steps=first_step, num_steps=run.steps_per_epoch - first_step,
            input_context=context, bad_images=run.bad_images)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _train_loop(run: _Run, state: _State) -> dict:
    """Trains from ``state.step`` to the last step; returns the speed figures."""
    config, recipe = run.config, run.recipe
    train_step = make_train_step(state.model, state.optimizer, run.strategy, recipe.batch_size,
                                 clip_global_norm=recipe.clip_global_norm,
                                 loss_scaling=run.loss_scaling, jit_compile=config.jit_compile)
    guard = _Guard(run, state)
    writer = tf.summary.create_file_writer(os.path.join(run.layout.logs, "train")) \
        if run.is_chief else tf.summary.create_noop_writer()
    progbar = keras.utils.Progbar(run.total_steps, stateful_metrics=["loss", "accuracy",
                                                                     "examples/s"],
                                  verbose=1 if (run.verbose and run.is_chief) else 0)
    rates, start_wall, last = [], time.time(), None
    window = _Window(state.step)
    try:
        with _StopSignal() as stop:
            preemption = _Preemption(run, stop, lambda: guard.save(state.step, last))
            while state.step < run.total_steps:
                epoch, offset = divmod(state.step, run.steps_per_epoch)
                for images, labels in _distributed_epoch(run, epoch, offset):
                    last = (images, labels)
                    window.add(*train_step(images, labels))
                    state.step += 1
                    step = state.step
                    saving = step % config.checkpoint_every == 0 or step == run.total_steps
                    if step % config.log_every == 0 or saving:
                        loss, accuracy, rate = window.flush(guard, recipe.batch_size)
                        rates.append(rate)
                        _log(writer, progbar, state, step, loss, accuracy, rate)
                        window = _Window(step)
                    if saving:
                        guard.save(step, last)
                    _report_bad_images(run)
                    preemption.check()
                    if step >= run.total_steps:
                        break
    except _Stopped:
        raise TrainingError(f"stopped by a signal at step {state.step} (this worker's or "
                            "another's); checkpoint saved, continue with --resume --output "
                            f"{config.output}") from None
    finally:
        writer.flush()
        if not run.is_chief and tf.io.gfile.exists(run.layout.scratch(run.task_id)):
            tf.io.gfile.rmtree(run.layout.scratch(run.task_id))
    # The first window includes tracing and compilation: leave it out when there are others.
    speed = float(np.median(rates[1:] if len(rates) > 1 else rates)) if rates else None
    return {"examples_per_second": speed, "wall_time_s": time.time() - start_wall}


def _report_bad_images(run: _Run) -> None:
    """Names the first few images skipped (every worker, its own); stops past the limit."""
    for name in run.bad_images.new_names():
        if run.verbose:
            print(f"\nkeras-vit train: skipped {name}: not a readable image "
                  f"({len(run.bad_images.names)} skipped so far)", flush=True)
    run.bad_images.check()


def _log(writer, progbar, state, step, loss, accuracy, rate):
    progbar.update(step, [("loss", loss), ("accuracy", accuracy), ("examples/s", rate)])
    with writer.as_default(step=step):
        tf.summary.scalar("loss", loss)
        tf.summary.scalar("accuracy", accuracy)
        tf.summary.scalar("examples_per_second", rate)
        tf.summary.scalar("learning_rate", float(state.optimizer.learning_rate))


def _finish(run: _Run, state: _State, loop: dict) -> dict:
    """Distributed evaluation on the test split; the chief writes model, export, metrics."""
    recipe, source = run.recipe, run.source

    def dataset_fn(context):
        return make_eval_pipeline(
            source.test, recipe.image_size, context.get_per_replica_batch_size(
                recipe.batch_size), num_examples=source.num_test,
            global_batch_size=recipe.batch_size, read=source.read, input_context=context,
            bad_images=run.bad_images)

    results = evaluate(state.model, run.strategy.distribute_datasets_from_function(dataset_fn),
                       run.strategy)
    _report_bad_images(run)
    metrics = {
        "top1": results["top1"], "top5": results["top5"], "test_loss": results["loss"],
        "num_test_examples": results["num_examples"], "steps": state.step,
        "examples_per_second": loop["examples_per_second"],
        "wall_time_s": loop["wall_time_s"], "dataset": source.name,
        "model": recipe.model, "recipe": recipe.name, "strategy": run.config.strategy,
        "replicas": run.strategy.num_replicas_in_sync, "precision": run.config.precision,
        "skipped_images": run.bad_images.summary(),
    }
    if run.is_chief:
        _write_outputs(run, state.model, metrics)
    return {"metrics": metrics, "model": state.model, "source": source}


def _write_labels(run: _Run) -> None:
    """``labels.json`` (the class names exactly: what predict and export read), and
    ``labels.txt`` (one a line) only when every name reads back from it as itself."""
    layout, names = run.layout, run.source.labels
    write_text_atomically(layout.labels_json, labels_json(names))
    if all(fits_labels_txt(name) for name in names):
        write_text_atomically(layout.labels, "\n".join(names) + "\n")
        return
    if tf.io.gfile.exists(layout.labels):
        tf.io.gfile.remove(layout.labels)
    odd = [name for name in names if not fits_labels_txt(name)]
    run.say(f"keras-vit train: class name(s) {', '.join(map(repr, odd[:3]))}"
            f"{' ...' if len(odd) > 3 else ''} do not fit labels.txt (one a line): the class "
            f"names are in {layout.labels_json} only")


def _write_outputs(run: _Run, model, metrics):
    layout = run.layout
    _write_labels(run)
    model.class_names = list(run.source.labels)  # saved in model.keras (keras_vit.models.ViTModel)
    write_atomically(layout.model, model.save, suffix=".keras")
    if run.config.export:
        from export import export_saved_model
        from export.saved_model import version_of
        done = version_of(model, layout.export, model.name)  # a resume after a late kill
        if done is not None:
            run.say(f"{done} already holds this model: not exported again")
        metrics["export"] = done or export_saved_model(model, layout.export, name=model.name,
                                                       labels=run.source.labels)
    from training.figures import write_training_curves
    write_training_curves(layout.root)
    write_text_atomically(layout.metrics, json.dumps(metrics, indent=2))
    speed = metrics["examples_per_second"]
    run.say(f"test top-1 {metrics['top1']:.4f}  top-5 {metrics['top5']:.4f}  "
            f"({metrics['num_test_examples']} examples), {metrics['steps']} steps, "
            + (f"{speed:.1f} examples/s" if speed is not None else "no steps trained now")
            + f"; run directory {layout.root}"
            + (f", export {metrics['export']}" if "export" in metrics else ""))
