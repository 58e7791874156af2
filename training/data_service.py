"""Training input through TensorFlow's tf.data service (``tf.data.experimental.service``):
the dispatcher and worker servers of ``keras-vit data-service``, and the training pipeline
of ``keras-vit train --data-service grpc://HOST:PORT``, whose reading, decoding and
augmentation run on the service's workers instead of the training host.

Processing mode: ``distributed_epoch`` (``ShardingPolicy.DYNAMIC``). The dispatcher hands
out the epoch's examples (in the epoch's shuffled order) to whichever worker asks next, so
slow and fast workers share the load and workers may join mid-run. tf.data promises at most
once per epoch: the examples a lost worker held are never seen in that epoch (counted in
``metrics.json``). ``parallel_epochs`` (``OFF``) would have every worker produce the whole
epoch (each example once per worker); the static policies (``FILE``/``DATA``) need a fixed
list of workers and wait for a lost one to come back.

A lost worker, and the stall timeout (``--data-service-timeout``, default
:data:`DEFAULT_STALL_TIMEOUT_S`). TensorFlow 2.21's trainer-side client ends an epoch only
when the dispatcher says the job's iteration is finished, which needs every task of the job
finished, the lost worker's too; the dispatcher, when a worker misses its heartbeats
(``worker_timeout_ms``), only logs "Lost worker" and keeps its task, and no setting of the
dispatcher (``job_gc_timeout_ms``, ``client_timeout_ms``) or of ``distribute`` finishes it.
A worker started again at the same address takes its task back and finishes it; one that
never comes back would hold the epoch's end for ever. So the trainer bounds the wait itself,
inside the tf.data pipeline each trainer builds: the service's batches are fetched with a
cancellable ``IteratorGetNext`` (:func:`service_batches`), and a wait for the next batch that
lasts the timeout is cancelled, which ends this trainer's service stream for the epoch; the
existing stand-in concatenation then fills the epoch's remaining steps with label -1
examples (counted as not delivered), so every trainer of a multi-worker run still takes the
same number of steps, each having timed out on its own. The next epoch is a new job. The
normal path pays one Python call per batch (the tally already made one); measured in
benchmarks/results/2026-12-06-data-service-loss-ice-lake.md. One trainer knows how many
examples its epoch has: it stops asking once all have come, so an epoch whose splits all
reached live workers does not wait for the lost worker's (empty) share either. Trainers of a
multi-worker run share a job and cannot know their share: each of their epochs waits out the
timeout until the lost worker is back (seen with two trainers on one host: the epoch after
the loss, a new job listing the dead worker, waited the timeout on both, and both took all
their steps and exited 0).

What holds with the service (and what does not, see docs/training.md): each example's
augmentation is a function of (seed, epoch, its position in the epoch's order), as without
the service; which examples make step k is not (workers deliver in the order they finish),
so a run is not bit-exact and a resume continues at the right step and epoch with the
positions after the ones the finished steps took, not with the same batches.

Nothing here imports TensorFlow at module level: ``keras-vit data-service --help`` and the
argument checks answer without it.
"""
from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from typing import List, Optional, Tuple

import numpy as np

PROCESSING_MODE = "distributed_epoch"
# The dispatcher counts a worker that has not sent a heartbeat for this long as lost
# (TensorFlow's default: an hour).
WORKER_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 10.0
# How long a trainer waits for the service's next batch before it takes the rest of the
# epoch as not delivered (--data-service-timeout): long enough for a job's first batch on a
# loaded host, short against an epoch of a real dataset.
DEFAULT_STALL_TIMEOUT_S = 120.0
DISPATCHER_WAIT_S = 60.0
_DISPATCHER_SERVICE = "/tensorflow.data.DispatcherService/"


class DataServiceError(ConnectionError):
    """The tf.data service cannot be used (unreachable, not a dispatcher, no workers)."""


def parse_address(text: str, flag: str, scheme: bool = False) -> Tuple[str, int]:
    """``HOST:PORT`` (``grpc://HOST:PORT`` when ``scheme``) -> (host, port); a ValueError
    naming ``flag`` otherwise."""
    example = "grpc://HOST:PORT" if scheme else "HOST:PORT"
    rest = text
    if scheme:
        if not text.startswith("grpc://"):
            raise ValueError(f"{flag} {text!r}: expected {example} (the dispatcher's address)")
        rest = text[len("grpc://"):]
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536 \
            or "/" in host:
        raise ValueError(f"{flag} {text!r}: expected {example} with a port in 1..65535")
    return host.strip("[]"), int(port)


def check_data_service(address: str, dataset: str) -> None:
    """What ``--data-service`` can serve: a ValueError naming the problem otherwise."""
    parse_address(address, "--data-service", scheme=True)
    if dataset.startswith("tfds:"):
        raise ValueError(f"--data-service cannot serve --dataset {dataset}: the workers look "
                         "examples up by index, which TFDS record files do not offer; use "
                         "digits or folder:PATH")


def check_stall_timeout(seconds, flag: str = "--data-service-timeout") -> float:
    """``seconds`` when it is a usable stall timeout; a ValueError naming ``flag`` otherwise."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not 0 < seconds < float("inf"):
        raise ValueError(f"{flag} {seconds!r}: expected a number of seconds > 0 (how long a "
                         "trainer waits for the service's next batch)")
    return seconds


def check_port(port: int, flag: str = "--port") -> int:
    if not 0 <= port < 65536:
        raise ValueError(f"{flag} {port}: expected a port in 0..65535 (0: any free one)")
    return port


def probe_dispatcher(host: str, port: int, timeout: float = CONNECT_TIMEOUT_S,
                     wait: float = 0.0) -> List[str]:
    """The addresses of the workers registered with the dispatcher at ``host:port``; a
    one-line :class:`DataServiceError` within about ``timeout`` seconds when nothing answers
    there or what answers is not a tf.data dispatcher (TensorFlow's own client retries for
    an hour). A refused connection is retried for ``wait`` seconds."""
    import grpc

    address = f"{host}:{port}"
    deadline = time.monotonic() + wait
    while True:  # a refused connection or an unknown host: said at once (after ``wait``)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            break
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DataServiceError(f"cannot reach a tf.data service dispatcher at "
                                       f"{address}: {error.strerror or error}") from None
            time.sleep(0.5)
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            reply = channel.unary_unary(_DISPATCHER_SERVICE + "GetWorkers",
                                        request_serializer=bytes,
                                        response_deserializer=bytes)(b"", timeout=timeout)
        except grpc.FutureTimeoutError:
            raise DataServiceError(f"no tf.data service dispatcher answers at {address} "
                                   f"(waited {timeout:.0f} s): start one with keras-vit "
                                   "data-service dispatcher --port PORT") from None
        except grpc.RpcError as error:
            raise DataServiceError(f"{address} is not a tf.data service dispatcher "
                                   f"({error.code().name}: {error.details()})") from None
    return _worker_addresses(reply)


def _worker_addresses(message: bytes) -> List[str]:
    """The worker addresses in a ``GetWorkersResponse`` (``repeated WorkerInfo workers = 1``,
    ``string address = 1``), read without TensorFlow's private protos."""
    def fields(data):
        at = 0
        while at < len(data):
            key, at = _varint(data, at)
            length, at = _varint(data, at) if key & 7 == 2 else (0, at)
            if key & 7 not in (0, 2):
                return
            if key & 7 == 0:
                length = 0
            yield key >> 3, data[at:at + length]
            at += length
    return [value.decode("utf-8", "replace") for number, worker in fields(message)
            if number == 1 for field, value in fields(worker) if field == 1]


def _varint(data: bytes, at: int) -> Tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _serve_until_stopped(server, what: str) -> int:
    """Blocks until SIGTERM or Ctrl-C, then stops ``server``; exit code 0."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    server.stop()
    print(f"keras-vit data-service {what}: stopped", flush=True)
    return 0


def serve_dispatcher(port: int, work_dir: Optional[str] = None) -> int:
    """Runs a dispatcher on ``port`` (0: any free one) until SIGTERM or Ctrl-C. With
    ``work_dir`` it journals its state there (fault-tolerant mode) and a restarted
    dispatcher resumes the jobs it was serving."""
    import tensorflow as tf

    service = tf.data.experimental.service
    server = service.DispatchServer(service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=work_dir is not None,
        worker_timeout_ms=WORKER_TIMEOUT_MS))
    bound = int(server.target.rsplit(":", 1)[1])
    print(f"keras-vit data-service dispatcher: serving on port {bound} "
          f"(train with --data-service grpc://{socket.gethostname()}:{bound}); "
          "Ctrl-C or SIGTERM stops it", flush=True)
    return _serve_until_stopped(server, "dispatcher")


def serve_worker(dispatcher: str, port: int, address: Optional[str] = None) -> int:
    """Runs a worker for the dispatcher at ``dispatcher`` (HOST:PORT) until SIGTERM or
    Ctrl-C; trainers reach it at ``address`` (default: this host's name)."""
    host, dispatcher_port = parse_address(dispatcher, "--dispatcher")
    # TensorFlow's worker would retry for ever; this waits a minute for a dispatcher that
    # is starting at the same time, then says so.
    probe_dispatcher(host, dispatcher_port, wait=DISPATCHER_WAIT_S)
    import tensorflow as tf

    service = tf.data.experimental.service
    server = service.WorkerServer(service.WorkerConfig(
        dispatcher_address=f"{host}:{dispatcher_port}", port=port,
        worker_address=f"{address or socket.gethostname()}:%port%"))
    print(f"keras-vit data-service worker: serving on port {server._address.rsplit(':', 1)[1]} "
          f"for the dispatcher at {host}:{dispatcher_port}; Ctrl-C or SIGTERM stops it",
          flush=True)
    return _serve_until_stopped(server, "worker")


def check_reachable(address: str) -> List[str]:
    """The workers of the dispatcher at ``address`` (``grpc://HOST:PORT``); a one-line
    :class:`DataServiceError` when it cannot be reached or has no worker."""
    host, port = parse_address(address, "--data-service", scheme=True)
    workers = probe_dispatcher(host, port)
    if not workers:
        raise DataServiceError(f"no worker is registered with the dispatcher at {host}:{port}:"
                               f" start one with keras-vit data-service worker --dispatcher "
                               f"{host}:{port}")
    return workers


class Tally:
    """What the training host received from the service (counted on the host, as the
    batches arrive): examples, per label, and stand-in examples (label -1) for the ones the
    service did not deliver (a lost worker, an unreadable image, the end of an epoch); and
    the epochs whose service stream the stall timeout ended."""

    def __init__(self, num_classes: int):
        self.label_counts = np.zeros(num_classes, np.int64)
        self.missing = 0
        self.stalled_epochs: List[int] = []
        self._lock = threading.Lock()

    def add(self, labels) -> bool:
        labels = np.asarray(labels)
        with self._lock:
            self.label_counts += np.bincount(labels[labels >= 0],
                                             minlength=len(self.label_counts))
            self.missing += int((labels < 0).sum())
        return True

    def stalled(self, epoch: int) -> None:
        with self._lock:
            self.stalled_epochs.append(epoch)

    def summary(self, dispatcher: str, workers: List[str], timeout: float) -> dict:
        return {"dispatcher": dispatcher, "processing_mode": PROCESSING_MODE,
                "workers_at_start": workers,
                "examples_received": int(self.label_counts.sum()),
                "examples_not_delivered": self.missing,
                "stall_timeout_s": timeout,
                # 1-based; an epoch twice when two of this host's input pipelines stalled
                "epochs_ended_by_stall_timeout": sorted(self.stalled_epochs)}


class StallWatch:
    """Cancels (through :attr:`manager`, a TensorFlow cancellation manager) a wait for the
    service's next batch once it has lasted ``timeout`` seconds: one thread that looks at
    the current wait every ``timeout / 4`` seconds (at most 1 s), so that a batch costs the
    reader two assignments, not a thread switch."""

    def __init__(self, timeout: float):
        from tensorflow.python.eager.cancellation import CancellationManager

        self.timeout = timeout
        self.manager = CancellationManager()
        self.fired = False
        self.since: Optional[float] = None  # when the current wait began (the reader sets it)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="keras-vit-data-service-stall-watch")
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout / 4)):
            since = self.since
            if since is not None and time.monotonic() - since >= self.timeout:
                self.fired = True
                self.manager.start_cancel()  # the iterator's GetNext returns Cancelled
                return


def _get_next(iterator, manager):
    """``iterator``'s next element as its flat list of tensors, through an
    ``IteratorGetNext`` that ``manager`` can cancel (the op's cancellation cancels the whole
    iterator: tf.data's IteratorResource forwards it, and the service's client stops)."""
    from tensorflow.python.eager import context, execute

    attrs = ("output_types", [execute.make_type(t, "output_types")
                              for t in iterator._flat_output_types],
             "output_shapes", [execute.make_shape(s, "output_shapes")
                               for s in iterator._flat_output_shapes])
    return execute.execute_with_cancellation(
        "IteratorGetNext", len(attrs[1]), inputs=[iterator._iterator_resource], attrs=attrs,
        ctx=context.context(), cancellation_manager=manager)


def service_batches(service_ds, timeout: float, expected: Optional[int] = None,
                    on_stall=None):
    """The batches of ``service_ds`` (a dataset read from the tf.data service), as they come.
    Ends when the service ends the stream; when ``expected`` examples have come (nothing
    more can come: it does not wait for the service to say so); or when no batch has come
    for ``timeout`` seconds (a lost worker: TensorFlow would wait for ever), after calling
    ``on_stall()``. The elements are the service's own tensors (no copy)."""
    import tensorflow as tf

    spec = service_ds.element_spec
    iterator = iter(service_ds)
    watch = StallWatch(timeout)
    received = 0
    try:
        while expected is None or received < expected:
            watch.since = time.monotonic()
            try:
                flat = _get_next(iterator, watch.manager)
            except tf.errors.OutOfRangeError:
                return
            except tf.errors.CancelledError:
                if not watch.fired:
                    raise
                if on_stall is not None:
                    on_stall()
                return
            finally:
                watch.since = None
            received += int(flat[0].shape[0])
            yield tf.nest.pack_sequence_as(spec, flat)
    finally:
        watch.stop()


class ServiceInput:
    """The training data of a run through the service: the examples as a table (looked up
    by index on the workers; the dispatcher splits the epoch's order), and the tally."""

    def __init__(self, run):
        import tensorflow as tf

        config, source = run.config, run.source
        self.run = run
        self.workers = check_reachable(config.data_service)
        self.items, self.labels = tf.data.Dataset.get_single_element(
            source.train.batch(source.num_train))
        self.tally = Tally(source.num_classes)

    def summary(self) -> dict:
        config = self.run.config
        return self.tally.summary(config.data_service, self.workers,
                                  config.data_service_timeout)

    def dataset_fn(self, epoch: int, first_step: int):
        """``distribute_datasets_from_function``'s function for the steps
        ``first_step..steps_per_epoch`` of ``epoch``."""
        import tensorflow as tf

        run = self.run
        recipe, seed = run.recipe, run.config.seed + epoch
        order = np.random.default_rng([run.config.seed, epoch]).permutation(
            run.source.num_train)
        begin, end = first_step * recipe.batch_size, run.steps_per_epoch * recipe.batch_size
        positions = np.arange(begin, end, dtype=np.int64)

        def dataset_fn(context):
            from training.augment import batch_mixer, image_augmenter
            from training.data import _fallback, _mix_batches, _options, train_example_fn

            batch_size = context.get_per_replica_batch_size(recipe.batch_size)
            prepare = train_example_fn(recipe.image_size, seed=seed,
                                       crop_area_min=recipe.crop_area_min, flip=recipe.flip,
                                       read=run.source.read,
                                       per_image=image_augmenter(recipe))  # on the workers
            items, labels = self.items, self.labels
            # One split (what the dispatcher hands a worker at a time) is a batch of
            # positions: a split per example costs a round trip to the dispatcher each.
            ds = tf.data.Dataset.from_tensor_slices(
                (positions.reshape(-1, batch_size), order[begin:end].reshape(-1, batch_size)))
            ds = ds.unbatch().map(lambda position, index: prepare(position, tf.gather(items, index),
                                                        tf.gather(labels, index)),
                        num_parallel_calls=tf.data.AUTOTUNE)
            ds = ds.ignore_errors().batch(batch_size)  # an unreadable image is left out
            ds = self._bounded(ds.apply(tf.data.experimental.service.distribute(
                processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                service=run.config.data_service, job_name=self._job_name(context, epoch,
                                                                         first_step))),
                epoch, end - begin if context.num_input_pipelines == 1 else None)
            # Partial batches from the workers are joined here; whatever the service could
            # not deliver (or the stall timeout cut off) is replaced by label -1 (trains
            # nothing) so that every trainer takes the same number of steps.
            ds = ds.unbatch().batch(batch_size, drop_remainder=True)
            stand_in = tf.data.Dataset.from_tensors(_fallback(
                recipe.image_size, self.labels.dtype)()).repeat().batch(batch_size)
            replicas_here = context.num_replicas_in_sync // context.num_input_pipelines
            ds = ds.concatenate(stand_in).take(
                (run.steps_per_epoch - first_step) * replicas_here)
            ds = ds.map(self._count)
            per_batch = batch_mixer(recipe, run.source.num_classes)  # soft targets, here
            if per_batch is not None:
                ds = _mix_batches(ds, per_batch, seed, context, first_step * replicas_here)
            return ds.with_options(_options()).prefetch(tf.data.AUTOTUNE)

        return dataset_fn

    def _bounded(self, service_ds, epoch: int, expected: Optional[int]):
        """``service_ds`` through :func:`service_batches`: its stream for this epoch ends
        when a batch has been awaited ``--data-service-timeout`` seconds."""
        import tensorflow as tf

        timeout = self.run.config.data_service_timeout
        return tf.data.Dataset.from_generator(
            lambda: service_batches(service_ds, timeout, expected,
                                    lambda: self._stalled(epoch, timeout)),
            output_signature=service_ds.element_spec)

    def _stalled(self, epoch: int, timeout: float) -> None:
        self.tally.stalled(epoch + 1)
        if self.run.verbose:
            print(f"\nkeras-vit train: no batch from the tf.data service at "
                  f"{self.run.config.data_service} for {timeout:g} s in epoch {epoch + 1}: a "
                  "worker was probably lost (TensorFlow waits for its share); the epoch's "
                  "remaining examples are stand-ins, counted as not delivered, and the next "
                  "epoch starts a new job", file=sys.stderr, flush=True)

    def _count(self, images, labels):
        import tensorflow as tf

        done = tf.py_function(self.tally.add, [labels], tf.bool)
        with tf.control_dependencies([done]):
            return tf.identity(images), tf.identity(labels)

    def _job_name(self, context, epoch: int, first_step: int) -> Optional[str]:
        """One trainer: an anonymous job per epoch. Several: one shared job (each example
        goes to one of them), named by the run, the epoch and the step it starts from."""
        if context.num_input_pipelines == 1:
            return None
        import os
        return (f"keras-vit:{os.path.abspath(self.run.config.output)}:seed"
                f"{self.run.config.seed}:epoch{epoch}:step{first_step}")


def distributed_epoch(run, epoch: int, first_step: int):
    """The trainer's epoch dataset through the service (see :class:`ServiceInput`)."""
    service = getattr(run, "service_input", None)
    if service is None:
        service = run.service_input = ServiceInput(run)
        run.say(f"keras-vit train: input from the tf.data service at {run.config.data_service}"
                f" ({len(service.workers)} worker(s), {PROCESSING_MODE})")
    return run.strategy.distribute_datasets_from_function(
        service.dataset_fn(epoch, first_step))
