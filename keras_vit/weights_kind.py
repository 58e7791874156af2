"""What kind of weights (or model) a path or handle is: decided once, here, for every place
that takes one (:func:`keras_vit.weights.load_weights`, :func:`keras_vit.sources.weights_source`,
:func:`keras_vit.pretrained.is_published_name`, :func:`keras_vit.hub.from_preset`, and
``export.model_sources.model_kind``, which adds the kinds only ``export`` knows: server URLs,
exported versions, run directories).

=====================  =================================================================
kind                   what it is
=====================  =================================================================
:data:`HUB`            ``hf://ORG/NAME[@REVISION]``: a Hugging Face hub repository
:data:`TIMM_DIR`       a directory in timm's hub layout: ``config.json`` with an
                       ``"architecture"`` (what timm's ``save_for_hf`` / ``push_to_hf_hub``
                       write) and ``model.safetensors``
:data:`TRANSFORMERS`   any other directory: a transformers model directory (``config.json``
                       with a ``"model_type"``, what ``save_pretrained`` writes)
:data:`NPZ`            an original (JAX) ``.npz`` checkpoint
:data:`TIMM_FILE`      a timm ``.safetensors`` file
:data:`PICKLE`         a pickled PyTorch file (``.bin``, ``.pth``, ...): refused by the loaders
:data:`KERAS`          a ``.keras`` model
:data:`KERAS_WEIGHTS`  a ``.weights.h5`` file
:data:`PUBLISHED`      a name of the original release (``"imagenet21k"``): a string that is
                       no existing path and has none of the suffixes above
:data:`UNKNOWN`        anything else
=====================  =================================================================

Only the name is looked at, and for a directory its ``config.json`` (read, never trusted:
an unreadable one is left to the loader, which names the problem). The module imports
nothing but the standard library, so that a command line can check its arguments without
TensorFlow (``export.model_sources`` loads it without the package's ``__init__``).
"""
from __future__ import annotations

import json
import os
from typing import Optional

HUB, TIMM_DIR, TRANSFORMERS = "hub", "timm_dir", "transformers"
NPZ, TIMM_FILE, PICKLE = "npz", "timm", "pickle"
KERAS, KERAS_WEIGHTS, PUBLISHED, UNKNOWN = "keras", "keras_weights", "published", "unknown"

HUB_SCHEME = "hf://"
# Files a repository is downloaded for (the weights only as safetensors: pickles are refused).
HUB_FILES = ["config.json", "preprocessor_config.json", "model.safetensors"]
_MAX_CONFIG_BYTES = 64 << 20  # as keras_vit.sources.MAX_JSON_BYTES
PICKLED_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
KERAS_SUFFIXES = (".keras", ".weights.h5")
# A string ending so is a file name, never a published name (a missing file is "not found").
_FILE_SUFFIXES = (".npz", ".keras", ".h5", ".safetensors") + PICKLED_SUFFIXES


def weights_kind(weights) -> Optional[str]:
    """The kind (a constant of this module) of ``weights``: a path, a ``hf://`` handle or a
    published name; None for None."""
    if weights is None:
        return None
    path = os.fspath(weights)
    if isinstance(path, str) and path.startswith(HUB_SCHEME):
        return HUB
    if os.path.isdir(path):
        return directory_kind(path)
    if isinstance(path, str) and not os.path.exists(path) and not path.endswith(_FILE_SUFFIXES):
        return PUBLISHED
    for suffixes, kind in ((PICKLED_SUFFIXES, PICKLE), (".npz", NPZ), (".safetensors", TIMM_FILE),
                           (".keras", KERAS), (".weights.h5", KERAS_WEIGHTS)):
        if path.endswith(suffixes):
            return kind
    return UNKNOWN


def directory_kind(directory) -> str:
    """:data:`TIMM_DIR` for a directory whose ``config.json`` names a timm ``architecture``,
    else :data:`TRANSFORMERS` (its loader says what is wrong with anything else)."""
    config = read_directory_config(directory)
    if isinstance(config, dict) and "architecture" in config and "model_type" not in config:
        return TIMM_DIR
    return TRANSFORMERS


def read_directory_config(directory) -> Optional[dict]:
    """The ``config.json`` of ``directory`` as a dict, or None when it has none, or it is
    unreadable, over 64 MiB or not a JSON object (the loaders say what is wrong with it)."""
    path = os.path.join(os.fspath(directory), "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG_BYTES + 1)
        config = json.loads(data) if len(data) <= _MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def download(handle: str) -> str:
    """The local directory of hub repository ``hf://ORG/NAME[@REVISION]``: from
    ``huggingface_hub``'s cache, downloaded there when missing (unless offline)."""
    repo, revision = split_handle(handle)
    try:
        import huggingface_hub
    except ImportError:
        raise ImportError(f"{handle}: hub handles need huggingface_hub; pip install "
                          "'keras-vit[hub]'") from None
    try:
        return huggingface_hub.snapshot_download(repo, revision=revision,
                                                 allow_patterns=HUB_FILES)
    except Exception as error:  # the library's own errors: not found, offline, gated, ...
        from keras_vit.errors import CheckpointError
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"{handle}: cannot get it from the Hugging Face hub "
                              f"({type(error).__name__}: {first})") from None


def split_handle(handle: str):
    """``"hf://ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")`` (revision None when not given); a
    ValueError naming the handle when it is not of that form."""
    rest = handle[len(HUB_SCHEME):] if handle.startswith(HUB_SCHEME) else handle
    repo, _, revision = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not revision):
        raise ValueError(f"{handle!r} is not a hub handle: expected hf://ORG/NAME or "
                         "hf://ORG/NAME@REVISION")
    return repo, revision or None
