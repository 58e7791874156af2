"""TensorFlow's oneDNN setting, which keras_vit's CPU speed depends on.

TensorFlow turns its oneDNN optimisations on by default only on CPUs with AVX512-VNNI,
AVX512-BF16 or AMX. Without them (e.g. AVX2-only x86 such as many AMD EPYC parts) it runs
Eigen kernels and does not fuse ``matmul + bias + GELU`` into one op; measured on a 2-core
AVX2 machine, ViT-B/16 inference is up to 1.2-1.8x faster with oneDNN on (README,
Performance).

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported (checked: setting it
after ``import tensorflow`` and before any op changes nothing), and importing keras_vit
imports TensorFlow. So no keras_vit call can switch it on, and keras_vit changes no
environment variable: set ``TF_ENABLE_ONEDNN_OPTS=1`` in the environment, or in
``os.environ`` before the first ``import keras`` / ``tensorflow`` / ``keras_vit``. The
``keras-vit`` command does that itself (``training.cli.set_runtime_defaults``).
:func:`onednn_enabled` tells whether it took effect.
"""
from __future__ import annotations

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN optimisations (decided at its import).

    Returns:
        True when oneDNN's kernels and graph rewrites are on.
    """
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())
