"""The commands start at once and quietly: ``--help``, every ``SUB --help`` and argument
errors answer without importing TensorFlow or Keras, and no TensorFlow C++ start-up line
reaches stderr unless ``--verbose`` or the user set ``TF_CPP_MIN_LOG_LEVEL``. Each check runs
the command's ``main`` in a fresh interpreter (what the console script runs)."""
import json
import os
import subprocess
import sys

from tests.conftest import REPO

# A fresh interpreter runs each argv through main, records for each whether TensorFlow or
# Keras got imported (and the exit code), and prints them as JSON on its last line.
DRIVER = r"""
import importlib, json, sys
module, cases = sys.argv[1], json.loads(sys.argv[2])
main = importlib.import_module(module).main
results = []
for argv in cases:
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
    results.append({"argv": argv, "code": code, "heavy": heavy[:3]})
print("@@" + json.dumps(results))
"""


def _clean_env(**extra):
    """The environment of a user who set no TensorFlow variable (conftest sets the log level
    for the test process; a child that inherited it would show nothing)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    return dict(env, PYTHONPATH=REPO, **extra)


def _run(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=_clean_env())


def _drive(module, cases):
    result = _run(["-c", DRIVER, module, json.dumps(cases)])
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.rpartition("@@")[2])


def _subcommands():
    from training.cli import build_parser
    action = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(action.choices)


def test_help_and_argument_errors_import_no_tensorflow(tmp_path):
    model = tmp_path / "m.keras"
    model.write_bytes(b"")  # exists: the missing image is what is refused
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG")
    missing = str(tmp_path / "missing")
    subcommands = _subcommands()
    assert {"train", "evaluate", "export", "predict", "convert", "explain",
            "inspect", "prepare"} <= set(subcommands)
    helps = [["--help"]] + [[sub, "--help"] for sub in subcommands] + [
        ["train", "--verbose", "--help"], ["data-service", "worker", "--help"],
        ["data-service", "dispatcher", "--help"]]
    errors = [
        ["train", "--steps", "-1"], ["train", "--epochs", "0"], ["train", "--bogus"],
        ["train", "--recipe", "nope"], ["train", "--learning-rate", "nan"],
        ["predict", missing + ".keras", str(image)], ["predict", str(model), missing + ".jpg"],
        ["predict", str(model), str(image), "--top-k", "0"],
        ["evaluate", missing], ["inspect", missing + ".keras", "--output", str(tmp_path)],
        ["explain", str(model), missing + ".png", "--output", str(tmp_path / "x.png")],
        ["explain", str(model), str(image), "--output", str(tmp_path / "x.txt")],
        ["export", missing + ".keras"], ["export", str(model), "--format", "onnx",
                                         "--quantize", "int8"],
        ["prepare", "--dataset", "folder:" + missing, "--output", missing],
        ["prepare", "--dataset", f"folder:{tmp_path}", "--output", str(tmp_path)],
        ["data-service", "worker", "--dispatcher", "nohost"],
        ["train", "--data-service", "127.0.0.1:5050"]]
    results = _drive("training.cli", helps + errors)
    assert [r["code"] for r in results] == [0] * len(helps) + [2] * len(errors), results
    assert results[-1]["heavy"] == [], results  # the modules imported by all of them
    # python -m export: its own parser and errors.
    results = _drive("export.cli", [["--help"], ["predict", "--help"], ["export", "--help"],
                                    ["predict", str(model), missing + ".jpg"],
                                    ["export", missing + ".keras"]])
    assert [r["code"] for r in results] == [0, 0, 0, 2, 2], results
    assert results[-1]["heavy"] == [], results


def test_a_refused_value_is_one_line_naming_the_flag(tmp_path):
    result = _run(["-m", "training", "--steps", "-1", "--output", str(tmp_path / "run")])
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "keras-vit train: error: steps must be a positive integer (got -1; flag --steps)"]
    assert not (tmp_path / "run").exists()


def _tf_log_lines(stderr):
    """The lines of TensorFlow's C++ logging (abseil's ``I0000 00:00:...`` form, its
    pre-initialisation notice, cpu_feature_guard's second line)."""
    import re
    pattern = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]|absl::InitializeLog|"
                         r"^To enable the following instructions")
    return [line for line in stderr.splitlines() if pattern.search(line)]


def _model_and_images(tiny_model, tmp_path):
    import tensorflow as tf
    path = str(tmp_path / "tiny.keras")
    tiny_model.save(path)
    good = tmp_path / "a.png"
    good.write_bytes(tf.io.encode_png(tf.zeros((40, 40, 3), tf.uint8)).numpy())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    return path, str(good), str(bad)


def test_commands_that_load_tensorflow_show_none_of_its_start_up_lines(tiny_model, tmp_path):
    model, good, bad = _model_and_images(tiny_model, tmp_path)
    result = _run(["-m", "training", "predict", model, good])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith(f"{good}: ")
    assert _tf_log_lines(result.stderr) == [] and result.stderr == ""
    # An error found after TensorFlow loaded: its one line, nothing else.
    result = _run(["-m", "training", "predict", model, bad])
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"keras-vit predict: error: invalid input: {bad} is not a decodable image"), lines


def test_python_m_export_starts_as_keras_vit_does(tiny_model, tmp_path):
    # The command's defaults (oneDNN on, C++ start-up quiet) before TensorFlow loads.
    model, _, bad = _model_and_images(tiny_model, tmp_path)
    code = ("import os, sys\nfrom export.cli import main\n"
            f"rc = main(['predict', {model!r}, {bad!r}])\n"
            "print(rc, os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    result = _run(["-c", code])
    assert result.stdout.split() == ["2", "1"], (result.stdout, result.stderr[-3000:])
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"python -m export predict: error: invalid input: {bad} is not"), lines


def test_verbose_or_the_users_log_level_shows_the_start_up_lines(tiny_model, tmp_path):
    model, good, _ = _model_and_images(tiny_model, tmp_path)
    result = _run(["-m", "training", "predict", "--verbose", model, good])
    assert result.returncode == 0, result.stderr[-3000:]
    assert any("oneDNN custom operations are on" in line
               for line in _tf_log_lines(result.stderr)), result.stderr
    user = subprocess.run([sys.executable, "-m", "training", "predict", model, good],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=_clean_env(TF_CPP_MIN_LOG_LEVEL="0"))
    assert user.returncode == 0, user.stderr[-3000:]
    assert any("oneDNN custom operations are on" in line
               for line in _tf_log_lines(user.stderr)), user.stderr


def test_console_script_ignores_a_training_or_export_folder_in_the_current_directory(tmp_path):
    """docs/architecture.md, Installed names: the installed ``keras-vit`` script starts from
    its own ``bin/`` directory, so a user's ``training/`` or ``export/`` package in the current
    directory does not shadow ours (``python -m training`` run there would pick it up)."""
    for name in ("training", "export"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text('raise SystemExit("shadowed")\n')
    script = os.path.join(os.path.dirname(sys.executable), "keras-vit")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([script, "--help"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: keras-vit")
