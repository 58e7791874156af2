"""Shared fixtures: tiny configurations, weight perturbation, subprocess runner."""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# TensorFlow's C++ start-up lines ignore the log level: pytest's capture hides them in one
# process, but a pytest-xdist worker imports this file with its stderr open, so they are
# dropped here as the commands drop them (export/startup.py).
from export.startup import _start_up_lines_filtered  # noqa: E402

with _start_up_lines_filtered():
    import keras_vit  # noqa: E402,F401
    import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A ViT small enough for a 2-core CI machine: 32x32 images, 16 tokens.
TINY = dict(patch_size=8, hidden_size=32, mlp_size=64, num_heads=4, num_layers=2)


def perturb(model, seed=0, scale=0.2):
    """Random weights: a fresh model's zero head makes every output 0, hiding any bug."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0.0, scale, variable.shape).astype(variable.dtype))
    return model


def random_images(batch=2, height=32, width=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (batch, height, width, 3)).astype(
        "float32")


def run_python(code, timeout=600, env=None):
    """Runs ``code`` in a fresh interpreter at the repository root; returns stdout."""
    full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, env=full_env)
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout


def pytest_sessionstart(session):
    """Names the CPU and the features the hardware-dependent tests decide on, at the top of
    every run (also under ``-q``), so a CI log says what was checked."""
    from keras_vit.runtime import describe_cpu
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(describe_cpu())


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")
    keras.backend.clear_session()


@pytest.fixture(autouse=True)
def _restored_environment():
    """``keras-vit``'s main() sets TensorFlow defaults in ``os.environ`` (for its own
    process); called in-process by a test they leaked into every later test's subprocesses,
    which then computed with other kernels than this process (TF_ENABLE_ONEDNN_OPTS=1: a
    fresh-process round trip off by 2e-7, a resumed run's weights off)."""
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def tiny_model():
    return perturb(keras_vit.ViT(image_size=32, num_classes=5, **TINY))
