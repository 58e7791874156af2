"""TensorFlow's oneDNN settings, which keras_vit's CPU speed depends on: oneDNN itself
(``TF_ENABLE_ONEDNN_OPTS``) and its weight cache (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS``, below).

TensorFlow turns its oneDNN optimisations on by default only on CPUs with AVX512-VNNI,
AVX512-BF16 or AMX. Without them (e.g. AVX2-only x86 such as many AMD EPYC parts) it runs
Eigen kernels and does not fuse ``matmul + bias + GELU`` into one op; measured on a 2-core
AVX2 machine, ViT-B/16 inference is up to 1.2-1.8x faster with oneDNN on (docs/performance,
Performance).

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported (checked: setting it
after ``import tensorflow`` and before any op changes nothing), and importing keras_vit
imports TensorFlow. So no keras_vit call can switch it on, and importing keras_vit changes
no environment variable: set ``TF_ENABLE_ONEDNN_OPTS=1`` in the environment, or in
``os.environ`` before the first ``import keras`` / ``tensorflow`` / ``keras_vit``. The
``keras-vit`` and ``python -m export`` commands do that themselves
(``export.startup.set_runtime_defaults``).
:func:`onednn_enabled` tells whether it took effect.
"""
from __future__ import annotations

import logging
import os
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN optimisations (decided at its import).

    Returns:
        True when oneDNN's kernels and graph rewrites are on.
    """
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


# The x86 features that decide what TensorFlow's oneDNN path does with bfloat16 (names as
# Linux's /proc/cpuinfo spells them).
REPORTED_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
                      "amx_bf16", "avx_ne_convert")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """This machine's CPU as Linux reports it: ``{"name", "family", "model", "flags"}``.

    Families matter: "AMD EPYC" alone spans Zen 1 (AVX2 only) to Zen 5 (AVX-512 BF16). On a
    system without ``/proc/cpuinfo`` the flags are empty and the name is the platform's.

    Args:
        cpuinfo: the file to read (a test passes another).
    """
    import platform
    info = {"name": platform.processor() or platform.machine(), "family": None,
            "model": None, "flags": frozenset()}
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "flags":
                    info["flags"] = frozenset(value.split())
                    break  # the first processor's block is complete here
                if key in ("model name", "cpu family", "model"):
                    info[{"model name": "name", "cpu family": "family"}.get(key, key)] = value
    except OSError:
        pass
    return info


def onednn_bfloat16_native(flags=None) -> bool:
    """Whether TensorFlow's oneDNN path computes bfloat16 on this CPU, by TensorFlow's own rule
    (``IsDataTypeSupportedByOneDNNOnThisCPU`` in ``tensorflow/core/util/util.cc``: AVX-512F or
    AVX-NE-CONVERT). Where it does, oneDNN's graph rewrite fuses bfloat16 matmuls and
    convolutions with their bias adds and GELU as in float32; elsewhere (AVX2-only CPUs such
    as AMD Zen 1-3) bfloat16 ops run as TensorFlow's unfused Eigen kernels, slower than
    float32.

    Args:
        flags: the CPU's feature flags (default: this machine's, :func:`cpu_description`).
    """
    flags = cpu_description()["flags"] if flags is None else set(flags)
    return "avx512f" in flags or "avx_ne_convert" in flags


def describe_cpu(info=None) -> str:
    """One line naming the CPU, its bfloat16-relevant features and what oneDNN does with
    bfloat16 here (printed at the top of the test suite and of benchmark results)."""
    info = cpu_description() if info is None else info
    name = info["name"]
    if info["family"] is not None:
        name += f" (family {info['family']}, model {info['model']})"
    present = [f for f in REPORTED_CPU_FLAGS if f in info["flags"]]
    absent = [f for f in REPORTED_CPU_FLAGS if f not in info["flags"]]
    native = "yes" if onednn_bfloat16_native(info["flags"]) else "no (unfused Eigen kernels)"
    return (f"CPU: {name}, {os.cpu_count()} cores; has {' '.join(present) or 'none'}; "
            f"lacks {' '.join(absent) or 'none'}; oneDNN bfloat16: {native}")


# oneDNN's weight cache. TensorFlow's oneDNN matmul and convolution kernels reorder a weight
# that is a graph constant once into the layout of the fastest kernel (AMX / AVX-512 blocked
# layouts) and keep the reordered copy; a weight read from a variable is used in its plain
# layout, or reordered again on every call. This variable makes every kernel treat its weights
# as constant: the frozen export's kernels with the weights as variables (same outputs, bit for
# bit, measured on the bfloat16 ViT-B/16 export), at the variables export's memory plus one
# reordered copy. It is read once per process (at the first oneDNN kernel), and it is only
# correct where no weight changes after a kernel first ran: each kernel keeps the first weights
# it saw. Measured: after ``assign`` to the weights, for a second model called eagerly in the
# same process (eager kernels are shared between models; wrong by up to 0.8 on logits of 2.6),
# and for one hybrid model called eagerly (its repeated convolutions share a kernel; 2% off).
# So: set it for TF Serving and inference-only processes that run graphs (``model.predict``,
# ``tf.function``), never where anything trains or runs eagerly.
FROZEN_WEIGHTS_VARIABLE = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


# The values TensorFlow accepts (``ReadBoolFromEnvVar``: exactly these, any case); any other
# value aborts the process at the first oneDNN kernel ("Failed to parse the env-var").
_TRUE, _FALSE = ("1", "true"), ("0", "false")


def weights_assumed_frozen(environ=None) -> bool:
    """Whether ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`` is set to a true value as TensorFlow reads
    it (``1`` or ``true``, any case, nothing around it), i.e. whether oneDNN may keep
    computing with stale weights after they change.

    Args:
        environ: the environment to read (default ``os.environ``).
    """
    value = (os.environ if environ is None else environ).get(FROZEN_WEIGHTS_VARIABLE, "")
    return value.lower() in _TRUE


def drop_frozen_weights_setting(prog: str, environ=None) -> bool:
    """Removes ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`` from the environment (saying so on stderr
    when it was on), so that this process's oneDNN kernels use the weights they are given.
    Effective only before the first oneDNN kernel has run (TensorFlow reads the variable then,
    once). The ``keras-vit`` and ``python -m export`` commands call it once TensorFlow has
    loaded, before any model runs (``export.startup.start_tensorflow``): they train, or call
    Keras models eagerly, where the setting gives wrong results (a hybrid model's repeated
    convolutions share one eager kernel).

    Args:
        prog: the command's name, for the message.
        environ: the environment (default ``os.environ``).

    Returns:
        Whether the setting was on.
    """
    environ = os.environ if environ is None else environ
    was_on = weights_assumed_frozen(environ)
    value = environ.pop(FROZEN_WEIGHTS_VARIABLE, None)
    if was_on:
        print(f"{prog}: ignoring {FROZEN_WEIGHTS_VARIABLE}={value} in this process (a setting "
              "for TF Serving; this command trains or calls Keras models eagerly, where it "
              "computes with stale weights)", file=sys.stderr)
    elif value is not None and value.lower() not in _FALSE:
        print(f"{prog}: ignoring {FROZEN_WEIGHTS_VARIABLE}={value!r}: TensorFlow accepts only "
              "1, true, 0 or false and aborts on anything else (a server started with it "
              "would too)", file=sys.stderr)
    return was_on


_warned_training = False


def warn_if_training_with_frozen_weights() -> None:
    """Logs once per process that training under ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS`` computes
    with the weights of the first step (called by the layers when traced for training)."""
    global _warned_training
    if _warned_training or not weights_assumed_frozen():
        return
    _warned_training = True
    logging.getLogger("keras_vit").warning(
        "%s is set: oneDNN keeps the first weights each kernel saw, so training in this "
        "process computes with stale weights; unset it (it is for serving only)",
        FROZEN_WEIGHTS_VARIABLE)
