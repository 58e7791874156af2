"""keras_vit turns TensorFlow's oneDNN optimisations on unless told otherwise."""
import os

import pytest

from tests.conftest import run_python

CHECK = ("import os, {first}; import keras_vit; "
         "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), keras_vit.onednn_enabled())")


def _env(value):
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    return env


@pytest.mark.parametrize("first,value,expected", [
    ("sys", None, "1 True"),            # keras_vit imported first: oneDNN on
    ("sys", "0", "0 False"),            # the user's explicit choice wins
    ("tensorflow", None, "None"),       # TensorFlow already loaded: left alone
])
def test_onednn_default(first, value, expected, monkeypatch):
    monkeypatch.setattr(os, "environ", _env(value))
    out = run_python(CHECK.format(first=first)).strip().splitlines()[-1]
    assert out.startswith(expected)


def test_cli_entry_imports_keras_vit_first(monkeypatch):
    monkeypatch.setattr(os, "environ", _env(None))
    out = run_python("import training.cli, export, keras_vit; "
                     "print(keras_vit.onednn_enabled())").strip().splitlines()[-1]
    assert out == "True"
