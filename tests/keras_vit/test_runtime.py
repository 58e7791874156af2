"""No environment changes at import; the keras-vit CLI sets its TensorFlow defaults in main()."""
import os
import subprocess
import sys

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
def test_cli_sets_onednn_before_tensorflow_loads_and_the_user_wins(monkeypatch, tmp_path, user,
                                                                   expected):
    monkeypatch.setattr(os, "environ", _env(**({"TF_ENABLE_ONEDNN_OPTS": user} if user else {})))
    not_a_model = tmp_path / "empty.keras"  # passes the argument checks, fails to load
    not_a_model.write_bytes(b"")
    out = run_python(
        "import os, sys, training.cli as cli\n"
        "assert 'tensorflow' not in sys.modules, 'the CLI module loaded TensorFlow'\n"
        f"rc = cli.main(['evaluate', {str(not_a_model)!r}, '--dataset', 'digits'])\n"
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


def test_training_a_model_under_the_onednn_weight_cache_warns_once():
    # In a fresh process: TensorFlow latches the variable at its first oneDNN kernel, and the
    # setting must not leak into this test process.
    out = run_python(
        "import logging, sys\n"
        "logging.basicConfig(stream=sys.stdout, format='%(message)s')\n"
        "import numpy as np, keras_vit\n"
        "from tests.conftest import TINY, random_images\n"
        "model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)\n"
        "model.compile(optimizer='sgd', loss='sparse_categorical_crossentropy')\n"
        "x, y = random_images(4), np.zeros(4, 'int32')\n"
        "model.predict(x, verbose=0)\n"
        "print('@@ predicted')\n"
        "model.fit(x, y, epochs=1, verbose=0)\n"
        "model.fit(x, y, epochs=1, verbose=0)\n"
        "print('@@ fitted twice')\n",
        env={"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"})
    before, _, after = out.partition("@@ predicted")
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS" not in before  # inference: no warning
    assert after.count("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set") == 1
    assert "@@ fitted twice" in after


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("True", True),
                                            ("0", False), ("", False), ("false", False),
                                            (" 1", False), ("yes", False), ("2", False)])
def test_weights_assumed_frozen_reads_the_variable_as_tensorflow_does(value, expected):
    from keras_vit.runtime import weights_assumed_frozen
    assert weights_assumed_frozen({"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": value}) is expected


@pytest.mark.parametrize("value,note", [
    ("1", "ignoring TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 in this process"),
    ("yes", "ignoring TF_ONEDNN_ASSUME_FROZEN_WEIGHTS='yes': TensorFlow accepts only"),
    ("0", None)])
def test_the_commands_drop_the_weight_cache_setting_and_say_why(capsys, value, note):
    from keras_vit.runtime import drop_frozen_weights_setting
    environ = {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": value, "HOME": "/root"}
    assert drop_frozen_weights_setting("keras-vit", environ) is (value == "1")
    assert environ == {"HOME": "/root"}
    err = capsys.readouterr().err
    assert (note in err) if note else err == ""


# Feature flags as Linux's /proc/cpuinfo lists them on the CPUs this project meets.
_ZEN1 = "fpu sse2 avx fma avx2 sha_ni"
_ZEN4 = _ZEN1 + " avx512f avx512bw avx512_vnni avx512_bf16"
_SKYLAKE_SERVER = "fpu sse2 avx fma avx2 avx512f avx512bw"       # AVX-512 without BF16
_SAPPHIRE_RAPIDS = _ZEN4 + " amx_bf16 amx_tile amx_int8"
_SIERRA_FOREST = "fpu sse2 avx fma avx2 avx_vnni avx_ne_convert"  # no AVX-512


@pytest.mark.parametrize("flags, native", [
    (_ZEN1, False), (_ZEN4, True), (_SKYLAKE_SERVER, True), (_SAPPHIRE_RAPIDS, True),
    (_SIERRA_FOREST, True), ("", False)])
def test_onednn_bfloat16_rule_is_tensorflows(flags, native):
    """TensorFlow's rule (util.cc, IsDataTypeSupportedByOneDNNOnThisCPU): AVX-512F or
    AVX-NE-CONVERT, not AVX512_BF16 (Skylake computes bfloat16 in oneDNN without it)."""
    from keras_vit.runtime import onednn_bfloat16_native
    assert onednn_bfloat16_native(flags.split()) is native


def test_onednn_bfloat16_rule_agrees_with_tensorflow_on_this_cpu():
    """This machine's answer equals the one TensorFlow itself gives (its pybind of the rule)."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_utils
    from keras_vit.runtime import onednn_bfloat16_native
    assert onednn_bfloat16_native() == bool(
        _pywrap_utils.IsDataTypeSupportedByOneDNNOnThisCPU(tf.bfloat16))


def test_cpu_description_reads_name_family_model_and_flags(tmp_path):
    from keras_vit.runtime import cpu_description, describe_cpu
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\n"
                       "model\t\t: 1\nmodel name\t: AMD EPYC 7601 32-Core Processor\n"
                       f"flags\t\t: {_ZEN1}\n\nprocessor\t: 1\nflags\t\t: {_ZEN4}\n")
    info = cpu_description(str(cpuinfo))
    assert (info["name"], info["family"], info["model"]) == \
        ("AMD EPYC 7601 32-Core Processor", "23", "1")
    assert info["flags"] == frozenset(_ZEN1.split())
    line = describe_cpu(info)
    assert "(family 23, model 1)" in line and "has avx2 fma;" in line
    assert line.endswith("oneDNN bfloat16: no (unfused Eigen kernels)")
