"""``<base>/models.config``: TF Serving's ``ModelServerConfig`` (text format), kept in step
with the exports.

The file is parsed and written as the real protocol buffer (from tensorflow-serving-api), so
every field someone wrote by hand (``model_version_policy``, ``version_labels``, ...) and
every other model's entry survives. Writers take an exclusive lock beside it and replace it
atomically through a temporary file of their own.
"""
from __future__ import annotations

import logging
import os

from export.versions import locked
from keras_vit.files import write_text_atomically

logger = logging.getLogger("keras_vit.export")

CONFIG_FILE = "models.config"
LOCK_FILE = ".models.config.lock"


class ModelsConfigError(ValueError):
    """models.config cannot be read or written; the file was left as it was."""


def _protos():
    try:
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2
    except ImportError as error:
        raise ModelsConfigError("tensorflow-serving-api is not installed: cannot read or "
                                "write models.config (pip install 'keras-vit[serving]')") \
            from error
    return text_format, model_server_config_pb2


def read_models_config(path: str):
    """The ``ModelServerConfig`` in ``path`` (empty when the file does not exist)."""
    text_format, pb2 = _protos()
    config = pb2.ModelServerConfig()
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as error:
            raise ModelsConfigError(f"{path} is not a valid ModelServerConfig: {error}") \
                from None
    return config


def register_model(base_dir: str, name: str) -> str:
    """Lists ``name`` (base path ``<base>/<name>``, absolute) in ``<base>/models.config``.

    An entry already there for ``name`` is kept as it is (a hand-written base path, e.g. a
    container's mount point, is the user's choice; a different one is logged).
    """
    text_format, _ = _protos()
    path = os.path.join(base_dir, CONFIG_FILE)
    base_path = os.path.abspath(os.path.join(base_dir, name))
    with locked(os.path.join(base_dir, LOCK_FILE)):
        config = read_models_config(path)
        if config.WhichOneof("config") == "custom_model_config":
            raise ModelsConfigError(f"{path} holds a custom_model_config, not a "
                                    "model_config_list: add the model by hand")
        entries = config.model_config_list.config
        existing = [entry for entry in entries if entry.name == name]
        if existing:
            if existing[0].base_path != base_path:
                logger.warning("%s lists %r with base_path %r (kept; this export is in %s)",
                               path, name, existing[0].base_path, base_path)
            return path
        entries.add(name=name, base_path=base_path, model_platform="tensorflow")
        write_text_atomically(path, text_format.MessageToString(config))
    return path
