"""The public API: listed once in keras_vit/__init__, documented with Args, one version."""
import inspect
import os
import re

import keras_vit
from tests.conftest import REPO

# keras_vit/preprocessing.py is being changed under another issue; its docstring is theirs.
NOT_YET = {"preprocess_image"}


def _documented_callables():
    for name in keras_vit.__all__:
        obj = getattr(keras_vit, name)
        if inspect.ismodule(obj) or not callable(obj) or name in NOT_YET:
            continue
        if inspect.isclass(obj) and issubclass(obj, Exception):
            continue
        yield name, obj


def test_every_public_name_exists_and_has_args_docs():
    for name in keras_vit.__all__:
        assert hasattr(keras_vit, name), name
    missing = []
    for name, obj in _documented_callables():
        doc = inspect.getdoc(obj) or ""
        params = inspect.signature(obj).parameters
        if name in keras_vit.VARIANTS:  # named builders: one line each, arguments of ViT
            ok = "keras_vit.ViT" in doc
        else:
            ok = "Args:" in doc or not params
        if not ok:
            missing.append(name)
    assert not missing, f"public callables without an Args: docstring: {missing}"
    for name in keras_vit.layers.__all__:
        assert "Args:" in inspect.getdoc(getattr(keras_vit.layers, name)), name


def test_one_version_string():
    setup = open(os.path.join(REPO, "setup.py"), encoding="utf-8").read()
    assert "keras_vit/version.py" in setup and not re.search(r'version="\d', setup)
    assert re.fullmatch(r"\d+\.\d+\.\d+", keras_vit.__version__)
