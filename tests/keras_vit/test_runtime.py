"""No environment changes at import; the keras-vit CLI sets its TensorFlow defaults in main()."""
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, run_python

VARIABLES = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")


def _env(**values):
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(values)
    return env


def test_importing_the_packages_changes_no_environment_variable(monkeypatch):
    monkeypatch.setattr(os, "environ", _env())
    out = run_python("import os; before = dict(os.environ); "
                     "import keras_vit, export, training; from training import train; "
                     "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("user,expected", [(None, "1 True"), ("0", "0 False")])
def test_cli_sets_onednn_before_tensorflow_loads_and_the_user_wins(monkeypatch, user, expected):
    monkeypatch.setattr(os, "environ", _env(**({"TF_ENABLE_ONEDNN_OPTS": user} if user else {})))
    out = run_python(
        "import os, sys, training.cli as cli\n"
        "assert 'tensorflow' not in sys.modules, 'the CLI module loaded TensorFlow'\n"
        "rc = cli.main(['evaluate', 'no-such-run'])\n"
        "from keras_vit import onednn_enabled\n"
        "print(rc, os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled())")
    assert out.strip().splitlines()[-1] == f"2 {expected}"


@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia"), reason="a machine with a GPU driver")
def test_cli_prints_no_cuda_error_on_a_cpu_machine(tmp_path):
    import keras_vit
    from tests.conftest import TINY
    model_path = str(tmp_path / "tiny.keras")
    keras_vit.ViT(image_size=32, num_classes=10, **TINY).save(model_path)
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", model_path, "--dataset", "digits"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(_env(), PYTHONPATH=REPO))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "top-1 0.1" in result.stdout  # zero head: chance on the 10 digits
    assert "cuInit" not in result.stderr and "CUDA error" not in result.stderr


def test_training_a_model_under_the_onednn_weight_cache_warns_once(monkeypatch, caplog):
    import keras_vit
    from keras_vit import runtime
    from tests.conftest import TINY, random_images
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = random_images(4), np.zeros(4, "int32")
    monkeypatch.setattr(runtime, "_warned_training", False)
    model.predict(x, verbose=0)  # inference is what the setting is for: no warning
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS" not in caplog.text
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    model.fit(x, y, epochs=1, verbose=0)
    assert caplog.text.count("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set") == 1
    model.fit(x, y, epochs=1, verbose=0)
    assert caplog.text.count("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set") == 1


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("True", True),
                                            ("0", False), ("", False), ("false", False)])
def test_weights_assumed_frozen_reads_the_variable_as_tensorflow_does(value, expected):
    from keras_vit.runtime import weights_assumed_frozen
    assert weights_assumed_frozen({"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": value}) is expected
