"""Filling a built model from any supported weights file (dispatch on the file type)."""
from __future__ import annotations

import os

import keras

from keras_vit.checkpoints import CheckpointError, load_pretrained, load_timm, load_transformers
from keras_vit.sources import PICKLED_SUFFIXES, refuse_pickle


def load_weights(model: keras.Model, weights) -> None:
    """Loads an original ``.npz`` checkpoint, a timm ``.safetensors`` file, a transformers
    model directory, a ``.keras`` model or a ``.weights.h5`` file. Pickled PyTorch files
    are refused."""
    path = os.fspath(weights)
    if path.endswith(PICKLED_SUFFIXES):
        refuse_pickle(path)
    if path.endswith(".npz"):
        load_pretrained(model, path)
    elif path.endswith(".safetensors"):
        load_timm(model, path)
    elif os.path.isdir(path):
        load_transformers(model, path)
    elif path.endswith((".keras", ".weights.h5")):
        if not os.path.exists(path):
            raise CheckpointError(f"weights file not found: {path}")
        model.load_weights(path)
    else:
        raise ValueError(f"cannot load weights from {path!r}: expected an original .npz "
                         "checkpoint, a timm .safetensors file, a transformers model "
                         "directory, a .keras or a .weights.h5 file, or (with a named builder "
                         "such as ViT_B16) a published checkpoint name")
