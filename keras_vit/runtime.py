"""TensorFlow runtime settings that keras_vit's speed depends on.

TensorFlow turns its oneDNN optimisations on by default only on CPUs with AVX512-VNNI,
AVX512-BF16 or AMX. Without them (e.g. AVX2-only x86 such as many AMD EPYC parts) it runs
Eigen kernels and does not fuse ``matmul + bias + GELU`` into one op; measured on a 2-core
AVX2 machine, ViT-B/16 inference is ~1.2x faster with oneDNN on (README, Performance).
``import keras_vit`` therefore sets ``TF_ENABLE_ONEDNN_OPTS=1`` when TensorFlow has not
been imported yet and the variable is unset; an explicit setting (``=0``) always wins.
"""
from __future__ import annotations

import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def default_onednn_on() -> None:
    """Called by ``keras_vit/__init__`` before TensorFlow is imported."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(ONEDNN_VARIABLE, "1")


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN optimisations (set at its import)."""
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())
