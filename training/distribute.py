"""Choosing the tf.distribute strategy (``--strategy``)."""
from __future__ import annotations

import json
import os

STRATEGIES = ("auto", "default", "mirrored", "multi_worker", "tpu")


def _tpu_strategy(tpu: str = ""):
    import tensorflow as tf

    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name: str = "auto", tpu: str = ""):
    """``auto``: TPU if a resolver finds one, mirrored over several GPUs, else default.

    ``multi_worker`` reads the cluster from ``TF_CONFIG`` (the standard way). Create the
    strategy before any other TensorFlow work (a tf.distribute requirement).
    """
    import tensorflow as tf

    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    if name == "auto":
        if tpu or os.environ.get("TPU_NAME"):
            return _tpu_strategy(tpu)
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable "
                             "(cluster and task) on every worker")
        json.loads(os.environ["TF_CONFIG"])  # fail early on malformed JSON
        return tf.distribute.MultiWorkerMirroredStrategy()
    return _tpu_strategy(tpu)


def worker_info(strategy):
    """(is_chief, task_id) for this process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True, 0
    task_type, task_id = resolver.task_type, resolver.task_id or 0
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                        "chief" not in resolver.cluster_spec().as_dict())
    return is_chief, task_id
