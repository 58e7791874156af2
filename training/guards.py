"""What stops a run cleanly: a divergence guard that saves only checkpoints holding finite
weights (:class:`Guard`), and SIGTERM/SIGINT handling that stops every worker at the same step
with a checkpoint (:class:`StopSignal`, :class:`Preemption`)."""
from __future__ import annotations

import os
import signal

import tensorflow as tf

from training.run_config import TrainingError
from training.run_state import Run, State


class StopSignal:
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


class Stopped(Exception):
    """Every worker has saved a checkpoint at the same step after a stop signal."""


class Guard:
    """Saves only checkpoints that hold finite weights giving finite logits.

    The loss of step k comes from the weights before update k, so a finite loss does not
    clear the weights a checkpoint would hold: before each save, a forward pass on the last
    batch (and a check of every weight and optimizer slot) does.
    """

    def __init__(self, run: Run, state: State):
        self.run, self.state = run, state
        strategy, model, optimizer = run.strategy, state.model, state.optimizer
        floats = [v for v in list(model.weights) + list(optimizer.variables)
                  if tf.as_dtype(v.dtype).is_floating]
        micro = run.config.accumulate  # with --accumulate, the first micro-batch (it fits)

        def replica_bad(images, labels):
            images = images[:tf.shape(images)[0] // micro] if micro > 1 else images
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


class Preemption:
    """Stops every worker at the same step with a checkpoint on SIGTERM/SIGINT.

    One process: its own signal. Several workers: the signal of any one of them, agreed
    through TensorFlow's ``PreemptionCheckpointHandler`` (coordination service), so that the
    others do not block at the next collective.
    """

    def __init__(self, run: Run, stop: StopSignal, save):
        self.stop, self.save, self.handler = stop, save, None
        resolver = getattr(run.strategy, "cluster_resolver", None)
        if resolver is not None and _num_workers(resolver) > 1:
            def exit_fn():
                raise Stopped()

            self.handler = tf.distribute.experimental.PreemptionCheckpointHandler(
                resolver, tf.train.Checkpoint(),
                checkpoint_dir=os.path.join(run.layout.scratch(run.task_id), "preemption"),
                termination_config=tf.distribute.experimental.TerminationConfig(
                    termination_watcher_fn=lambda: stop.received is not None,
                    exit_fn=exit_fn, grace_period=0, save_fn=lambda: save()))

    def check(self):
        """After each step: on a (cluster-wide) stop, save and raise Stopped."""
        if self.handler is not None:
            self.handler.save_checkpoint_if_preempted()
        elif self.stop.received is not None:
            self.save()
            raise Stopped()


def _num_workers(resolver) -> int:
    jobs = resolver.cluster_spec().as_dict()
    return sum(len(jobs.get(job, [])) for job in ("chief", "worker"))
