"""How the keras-vit commands (``keras-vit`` and ``python -m export``) start TensorFlow.

Nothing here imports TensorFlow at module level: a command parses and checks its arguments
first (so ``--help`` and argument errors answer at once), then :func:`start_tensorflow` sets
the defaults TensorFlow reads once, at its import, and imports it, once.

Quiet by default. TensorFlow 2.21's C++ start-up writes some lines before its logging is set
up, and those ignore ``TF_CPP_MIN_LOG_LEVEL``: abseil's "All log messages before
absl::InitializeLog() is called are written to STDERR", then "Could not find cuda drivers"
(cudart_stub) and "oneDNN custom operations are on" (port.cc), once per shared library that
carries them (twice). On a machine without an NVIDIA driver the device probe then logs
"failed call to cuInit" as an error. So the import and the device probe run with file
descriptor 2 captured, and what they wrote then goes to stderr without those known lines
(:data:`START_UP_NOISE`); from then on everything reaches stderr directly, and the log level
(INFO hidden, warnings and errors shown) does the rest. ``--verbose``, or a
``TF_CPP_MIN_LOG_LEVEL`` the user set, shows everything.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import tempfile

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"

# TensorFlow's C++ start-up lines that say nothing to act on (see the module docstring).
START_UP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"
    r"|port\.cc:\d+\] oneDNN custom operations are on")
# The device probe's error where no NVIDIA driver is installed (not noise where one is).
NO_DRIVER_NOISE = re.compile(r"cuda_platform\.cc:\d+\] failed call to cuInit")


def add_verbose_flag(parser, subparsers=None) -> None:
    """``--verbose`` on ``parser`` and on each of its ``subparsers`` (before or after the
    subcommand)."""
    text = "show TensorFlow's C++ start-up and INFO log lines"
    parser.add_argument("--verbose", action="store_true", help=text)
    for sub in {id(p): p for p in (subparsers.choices.values() if subparsers else ())}.values():
        # SUPPRESS: a subcommand's default must not reset the main parser's flag.
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                         help=text)


def set_runtime_defaults(environ=os.environ, verbose: bool = False) -> None:
    """The commands' TensorFlow settings, set before TensorFlow loads (it reads them once, at
    import); a value the user set wins. oneDNN's fused CPU kernels also where TensorFlow
    leaves them off (AVX2-only x86; docs/performance), and C++ INFO lines hidden (unless
    ``verbose``)."""
    environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if not verbose:
        environ.setdefault(LOG_LEVEL_VARIABLE, "1")


def is_start_up_noise(line: str, nvidia_driver: bool) -> bool:
    """Whether ``line`` is one of TensorFlow's known start-up lines (module docstring)."""
    return bool(START_UP_NOISE.search(line)
                or (not nvidia_driver and NO_DRIVER_NOISE.search(line)))


@contextlib.contextmanager
def _start_up_lines_filtered():
    """Captures file descriptor 2 (C++ and Python writes alike); at the end writes what was
    captured to stderr, in order, less the known start-up lines."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    nvidia_driver = os.path.exists("/proc/driver/nvidia")
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not is_start_up_noise(line, nvidia_driver))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def start_tensorflow(prog: str, verbose: bool = False, environ=os.environ) -> None:
    """Sets the defaults, imports TensorFlow (quietly unless ``verbose`` or the user set
    ``TF_CPP_MIN_LOG_LEVEL``) and probes its devices, then drops the oneDNN weight-cache
    setting (:func:`keras_vit.runtime.drop_frozen_weights_setting`): the commands train or
    call models eagerly. Call it after the arguments were checked, before any TensorFlow
    work.

    Args:
        prog: the command's name, for messages.
        verbose: show TensorFlow's start-up and INFO lines.
        environ: the environment (default ``os.environ``).
    """
    quiet = not verbose and LOG_LEVEL_VARIABLE not in environ
    set_runtime_defaults(environ, verbose)
    with _start_up_lines_filtered() if quiet else contextlib.nullcontext():
        import tensorflow as tf
        tf.config.list_physical_devices()  # the CUDA probe, whose error is noise without a GPU
    from keras_vit.runtime import drop_frozen_weights_setting
    drop_frozen_weights_setting(prog)  # before any model runs: TensorFlow reads it once
