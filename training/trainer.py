"""The training loop: a custom ``strategy.run`` loop that works under every tf.distribute
strategy (Keras 3's ``Model.fit`` fails under MultiWorkerMirroredStrategy,
keras-team/keras#20585), with checkpoints that survive a kill, a NaN guard, TensorBoard
logs and the run directory of the design contract (``export/run_layout.py``).

A run is four named steps: :func:`training.run_state.set_up` (validate, choose the data),
:func:`training.run_state.create_state` (model, optimizer, checkpoint, restore),
:func:`_train_loop` and :func:`_finish` (distributed evaluation, model, export, metrics).
Where each concern lives: the configuration in :mod:`training.run_config`, the state and its
checkpoints in :mod:`training.run_state`, the divergence and preemption guards in
:mod:`training.guards`, the step functions in :mod:`training.steps`.
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from export.run_layout import fits_labels_txt, labels_json
from keras_vit.files import write_atomically, write_text_atomically
from training.data import DataSource, make_eval_pipeline, make_train_pipeline
from training.guards import Guard, Preemption, StopSignal, Stopped
from training.run_config import (RunConfig, TrainingError, build_model,  # noqa: F401
                                 load_run_config, model_architecture)
from training.run_state import Run, State, create_state, finished_metrics, set_up
from training.steps import evaluate, make_train_step  # noqa: F401


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


def _train(config, strategy, resume, source, verbose):
    with contextlib.ExitStack() as held:
        run = set_up(config, strategy, resume, source, verbose, held)
        return _run(run)


def _run(run: Run) -> dict:
    state = create_state(run)
    if state.step > run.total_steps:
        raise ValueError(f"the run in {run.layout.root} is at step {state.step}, beyond the "
                         f"{run.total_steps} steps asked: --steps/--epochs can only lengthen it")
    finished = finished_metrics(run, state)
    if finished is not None:
        run.say(f"keras-vit train: {run.layout.root} already finished at step {state.step}; "
                "nothing to do")
        if state.average is not None:
            state.average.copy_to_model()  # the model the run saved
        return {"metrics": finished, "model": state.model, "source": run.source,
                "already_finished": True}
    loop = _train_loop(run, state)
    return _finish(run, state, loop)


class _Window:
    """The steps since the last log: losses stay on the device until :meth:`flush`."""

    def __init__(self, step):
        self.start_step, self.start_time = step, time.perf_counter()
        self.losses, self.corrects = [], []

    def add(self, loss, correct):
        self.losses.append(loss)
        self.corrects.append(correct)

    def flush(self, guard: Guard, batch_size: int):
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


def _distributed_epoch(run: Run, epoch: int, first_step: int):
    """The steps ``first_step..steps_per_epoch`` of ``epoch``, each worker its share."""
    recipe, strategy = run.recipe, run.strategy
    if run.config.data_service:
        from training.data_service import distributed_epoch
        return distributed_epoch(run, epoch, first_step)

    def dataset_fn(context):
        return make_train_pipeline(
            run.source.train, recipe.image_size,
            context.get_per_replica_batch_size(recipe.batch_size), seed=run.config.seed + epoch,
            crop_area_min=recipe.crop_area_min, flip=recipe.flip, read=run.source.read,
            skip_steps=first_step, num_steps=run.steps_per_epoch - first_step,
            input_context=context, bad_images=run.bad_images, augment=recipe,
            num_classes=run.source.num_classes)

    return strategy.distribute_datasets_from_function(dataset_fn)


def _train_loop(run: Run, state: State) -> dict:
    """Trains from ``state.step`` to the last step; returns the speed figures."""
    config, recipe = run.config, run.recipe
    train_step = make_train_step(state.model, state.optimizer, run.strategy, recipe.batch_size,
                                 clip_global_norm=recipe.clip_global_norm,
                                 loss_scaling=run.loss_scaling, jit_compile=config.jit_compile,
                                 seed=config.seed, accumulate=config.accumulate,
                                 average=state.average)
    guard = Guard(run, state)
    writer = tf.summary.create_file_writer(os.path.join(run.layout.logs, "train")) \
        if run.is_chief else tf.summary.create_noop_writer()
    progbar = keras.utils.Progbar(run.total_steps, stateful_metrics=["loss", "accuracy",
                                                                     "examples/s"],
                                  verbose=1 if (run.verbose and run.is_chief) else 0)
    rates, start_wall, last = [], time.time(), None
    window = _Window(state.step)
    try:
        with StopSignal() as stop:
            preemption = Preemption(run, stop, lambda: guard.save(state.step, last))
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
    except Stopped:
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


def _report_bad_images(run: Run) -> None:
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


def _evaluate_on_test(run: Run, model) -> dict:
    """Distributed evaluation of ``model`` on the test split, in batches of one micro-batch
    (``--accumulate``: the batch that fits)."""
    recipe, source = run.recipe, run.source
    batch_size = recipe.batch_size // run.config.accumulate

    def dataset_fn(context):
        return make_eval_pipeline(
            source.test, recipe.image_size, context.get_per_replica_batch_size(batch_size),
            num_examples=source.num_test, global_batch_size=batch_size, read=source.read,
            input_context=context, bad_images=run.bad_images)

    results = evaluate(model, run.strategy.distribute_datasets_from_function(dataset_fn),
                       run.strategy)
    _report_bad_images(run)
    return results


def _finish(run: Run, state: State, loop: dict) -> dict:
    """Distributed evaluation on the test split; the chief writes model, export, metrics.
    With ``--ema-decay`` the averaged weights replace the raw ones (which stay in the
    checkpoints) before the evaluation: the metrics, model and export are the EMA model's."""
    recipe, source = run.recipe, run.source
    ema = None
    if state.average is not None:
        raw = _evaluate_on_test(run, state.model)
        state.average.copy_to_model()
        ema = {"decay": recipe.ema_decay, "saved_model": "ema", "raw_weights": {
            "top1": raw["top1"], "top5": raw["top5"], "test_loss": raw["loss"]}}
    results = _evaluate_on_test(run, state.model)
    metrics = {
        "top1": results["top1"], "top5": results["top5"], "test_loss": results["loss"],
        "num_test_examples": results["num_examples"], "steps": state.step,
        "examples_per_second": loop["examples_per_second"],
        "wall_time_s": loop["wall_time_s"], "dataset": source.name,
        "model": recipe.model, "recipe": recipe.name, "strategy": run.config.strategy,
        "replicas": run.strategy.num_replicas_in_sync, "precision": run.config.precision,
        "skipped_images": run.bad_images.summary(),
        "accumulate": run.config.accumulate,
    }
    if getattr(run, "service_input", None) is not None:
        metrics["data_service"] = run.service_input.summary()
    if ema is not None:
        metrics["ema"] = ema
    if run.is_chief:
        _write_outputs(run, state.model, metrics)
    result = {"metrics": metrics, "model": state.model, "source": source}
    if getattr(run, "service_input", None) is not None:
        result["data_service_tally"] = run.service_input.tally  # what each label received
    return result


def _write_labels(run: Run) -> None:
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


def _write_outputs(run: Run, model, metrics):
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
