"""Filling a built model from any supported weights file (dispatch on the file type), and
reading Keras's own files (``.keras``, ``.weights.h5``) with the checks of the other loaders:
a corrupt or truncated file is named as such, NaN or infinite weights are refused."""
from __future__ import annotations

import os
import zipfile

import keras
import numpy as np

from keras_vit import weights_kind as kinds
from keras_vit.checkpoints import (CheckpointError, check_finite, load_pretrained, load_timm,
                                   load_transformers, transformers_weights_file)
from keras_vit.sources import refuse_pickle

KERAS_SUFFIXES = kinds.KERAS_SUFFIXES


def load_weights(model: keras.Model, weights) -> None:
    """Loads an original ``.npz`` checkpoint, a timm ``.safetensors`` file, a transformers
    model directory, a directory in timm's hub layout, a ``hf://ORG/NAME[@REVISION]`` hub
    repository (downloaded through ``huggingface_hub``), a ``.keras`` model or a
    ``.weights.h5`` file (:mod:`keras_vit.weights_kind`). Pickled PyTorch files are
    refused."""
    path = os.fspath(weights)
    kind = kinds.weights_kind(path)
    if kind == kinds.HUB:
        path = kinds.download(path)
        kind = kinds.directory_kind(path)
    if kind == kinds.PICKLE:
        refuse_pickle(path)
    elif kind == kinds.NPZ:
        load_pretrained(model, path)
    elif kind == kinds.TIMM_FILE:
        load_timm(model, path)
    elif kind == kinds.TIMM_DIR:
        load_timm(model, transformers_weights_file(path))
    elif kind == kinds.TRANSFORMERS:
        load_transformers(model, path)
    elif kind in (kinds.KERAS, kinds.KERAS_WEIGHTS):
        load_keras_weights(model, path)
    else:
        raise ValueError(f"cannot load weights from {path!r}: expected an original .npz "
                         "checkpoint, a timm .safetensors file, a transformers or timm hub "
                         "model directory, an hf://ORG/NAME handle, a .keras or a .weights.h5 "
                         "file, or (with a named builder such as ViT_B16) a published "
                         "checkpoint name")


def check_keras_file(path: str) -> None:
    """A ``.keras`` file is a zip archive with ``config.json`` and ``model.weights.h5``; a
    ``.weights.h5`` file an HDF5 file that opens. Anything else (a truncated download, say)
    is a :class:`CheckpointError` saying so, not Keras's "File not found" for a file that
    exists."""
    if not os.path.exists(path):
        raise CheckpointError(f"weights file not found: {path}")
    kind = ".keras" if path.endswith(".keras") else ".weights.h5"
    try:
        if kind == ".keras":
            with zipfile.ZipFile(path) as archive:
                missing = {"config.json", "model.weights.h5"} - set(archive.namelist())
            detail = f"the archive has no {', '.join(sorted(missing))}" if missing else ""
        else:
            import h5py
            h5py.File(path, "r").close()
            detail = ""
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        detail = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    if detail:
        raise CheckpointError(f"cannot load {path}: not a readable {kind} file (corrupt or "
                              f"truncated?): {detail}")


def _named_values(model: keras.Model):
    """``(variable path, float32 value)`` of each floating-point weight."""
    for variable in model.weights:
        if keras.backend.is_float_dtype(variable.dtype):
            yield variable.path, np.asarray(keras.ops.convert_to_numpy(
                keras.ops.cast(variable, "float32")))


def load_keras_weights(model: keras.Model, path: str) -> None:
    """``model.load_weights(path)`` for a ``.keras`` or ``.weights.h5`` file, with the
    loaders' promises: a corrupt file is named as such (:func:`check_keras_file`), and
    NaN or infinite weights raise :class:`CheckpointError` naming them, with the model's
    weights as they were before."""
    check_keras_file(path)
    before = [variable.numpy() for variable in model.weights]
    try:
        model.load_weights(path)
        check_finite(path, _named_values(model), "weight(s)",
                     consequence="no weight was changed")
    except Exception:
        for variable, value in zip(model.weights, before):
            variable.assign(value)
        raise


def load_keras_model(path: str) -> keras.Model:
    """``keras.saving.load_model`` for a ``.keras`` file, with the loaders' promises: a
    corrupt file and any Keras error are one-line :class:`CheckpointError` s naming the
    file, and a model with NaN or infinite weights is refused naming them."""
    import keras_vit.layers  # noqa: F401  (registers the layers for deserialization)
    check_keras_file(path)
    try:
        model = keras.saving.load_model(path)
    except Exception as error:  # Keras raises several types for a bad archive
        raise CheckpointError(f"cannot load {path}: {type(error).__name__}: "
                              f"{str(error).splitlines()[0] if str(error) else ''}") from None
    check_finite(path, _named_values(model), "weight(s)", consequence="the model is not used")
    return model
