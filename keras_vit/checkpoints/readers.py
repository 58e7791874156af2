"""The header-first safe readers: an ``.npz`` archive's or a ``.safetensors`` file's names,
shapes and dtypes from the headers alone (a member that declares more bytes than it holds,
pickled objects and dtypes numpy cannot hold are refused), then only the arrays that load."""
from __future__ import annotations

import dataclasses
import os
import zipfile
from typing import Dict, Sequence

import numpy as np

from keras_vit.checkpoints.key_map import Shape
from keras_vit.errors import CheckpointError


# ---- Reading an .npz archive: headers first, then only the arrays that load. ----

@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What an ``.npz`` member's header declares."""

    shape: Shape
    dtype: np.dtype


def _read_header(member, size: int, key: str, path: str) -> ArrayInfo:
    version = np.lib.format.read_magic(member)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise CheckpointError(f"{path}: array {key!r} has .npy format version {version}, "
                              "which keras_vit does not read")
    shape, _, dtype = readers[version](member)
    shape = tuple(int(d) for d in shape)
    if dtype.hasobject:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint: array {key!r} holds "
                              "Python objects (pickles are refused)")
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    available = size - member.tell()
    if available < needed:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): array {key!r} "
            f"declares shape {shape} ({needed:,} bytes) but holds {available:,} bytes")
    return ArrayInfo(shape, dtype)


def read_npz_index(path) -> Dict[str, ArrayInfo]:
    """Names, shapes and dtypes of an ``.npz`` checkpoint's arrays, from the headers only.

    No array data is read, so a checkpoint can be checked against a model before its
    (possibly large) arrays cost any memory.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    index = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    index[key] = _read_header(member, info.file_size, key, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): "
            f"{type(error).__name__}: {error}") from None
    return index


def read_npz_arrays(path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` checkpoint (no pickles), with clear errors."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): "
            f"{type(error).__name__}: {error}") from None


# ---- Reading a .safetensors file (numpy API, no torch): header first, then the arrays. ----

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _safe_open(path: str):
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install "
                              "safetensors (or keras-vit[hub])") from None
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return safe_open(path, framework="np")
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or "
                              f"truncated?): {type(error).__name__}: {error}") from None


def read_safetensors_index(path) -> Dict[str, ArrayInfo]:
    """Names, shapes and dtypes of a ``.safetensors`` file's tensors, from its header only."""
    path = os.fspath(path)
    index = {}
    with _safe_open(path) as tensors:
        for key in tensors.keys():
            info = tensors.get_slice(key)
            dtype = info.get_dtype()
            if dtype not in _SAFETENSORS_DTYPES:
                raise CheckpointError(
                    f"{path}: tensor {key!r} is {dtype}, which numpy cannot hold (keras_vit "
                    "reads safetensors without torch); save the checkpoint as float32 or "
                    "float16")
            index[key] = ArrayInfo(tuple(int(d) for d in info.get_shape()),
                                   np.dtype(_SAFETENSORS_DTYPES[dtype]))
    return index


def read_safetensors_arrays(path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The tensors ``keys`` of a ``.safetensors`` file as numpy arrays."""
    path = os.fspath(path)
    try:
        with _safe_open(path) as tensors:
            return {key: tensors.get_tensor(key) for key in keys}
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or "
                              f"truncated?): {type(error).__name__}: {error}") from None
