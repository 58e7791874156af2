"""Filling a built model from any supported weights file (dispatch on the file type)."""
from __future__ import annotations

import os

import keras

from keras_vit.checkpoints import CheckpointError, load_pretrained


def load_weights(model: keras.Model, weights) -> None:
    """Loads an original ``.npz`` checkpoint, a ``.keras`` model or a ``.weights.h5`` file."""
    path = os.fspath(weights)
    if path.endswith(".npz"):
        load_pretrained(model, path)
    elif path.endswith((".keras", ".weights.h5")):
        if not os.path.exists(path):
            raise CheckpointError(f"weights file not found: {path}")
        model.load_weights(path)
    else:
        raise ValueError(f"cannot load weights from {path!r}: expected an original .npz "
                         "checkpoint, a .keras or a .weights.h5 file, or (with a named builder "
                         "such as ViT_B16) a published checkpoint name")
