"""Any model the user names, for ``keras-vit predict`` (and ``explain`` / ``inspect`` /
``export``): a training run directory, a ``.keras`` file, an original ``.npz`` checkpoint, a
timm ``.safetensors`` file, a transformers or timm hub model directory, a Hugging Face hub
handle (``hf://ORG/NAME[@REVISION]``, :func:`keras_vit.from_preset`), a SavedModel export
version directory, or a TF Serving URL. What a path is comes from
:func:`keras_vit.weights_kind.weights_kind`; the kinds only ``export`` knows (servers,
exported versions, run directories) are checked here first. Images go through the project's one
preprocessing function (:func:`keras_vit.preprocess_image`) or the export's own graph,
which uses the same function.
"""
from __future__ import annotations

import importlib.util
import json
import os
import stat
import sys
from typing import List, Optional, Sequence

import numpy as np

from export.run_layout import RunLayout

SERVER_SCHEMES = ("http://", "https://", "grpc://")
# An image file larger than this is refused before it is read (25 megapixels, the pixel
# limit, is 100 MB as an uncompressed 32-bit BMP).
MAX_IMAGE_FILE_BYTES = 128 * 2 ** 20
KINDS = ("a run directory, a .keras file, an original .npz checkpoint, a timm .safetensors "
         "file, a transformers or timm hub model directory (config.json), a hub handle "
         "(hf://ORG/NAME), an exported version directory (saved_model.pb) or a server URL "
         "(http://, grpc://)")
# keras_vit.weights_kind's kinds -> model_kind's names (the others are not models).
_LIBRARY_KINDS = {"keras": "keras", "npz": "npz", "timm": "timm", "hub": "hub",
                  "timm_dir": "hub", "transformers": "transformers"}


def weights_kinds():
    """:mod:`keras_vit.weights_kind`, without importing the ``keras_vit`` package (its
    ``__init__`` imports TensorFlow; the module itself only the standard library), so that
    argument checks stay quick. Registered under its own name: a later ``import keras_vit``
    uses this very module."""
    name = "keras_vit.weights_kind"
    if name not in sys.modules:
        package = importlib.util.find_spec("keras_vit")
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(list(package.submodule_search_locations)[0], "weights_kind.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def model_kind(spec: str) -> str:
    """``"server"``, ``"saved_model"``, ``"run"``, ``"keras"``, ``"npz"``, ``"timm"``,
    ``"transformers"`` or ``"hub"`` (a ``hf://`` handle or a timm hub directory); a
    ValueError naming ``spec`` for anything else."""
    kinds = weights_kinds()
    if spec.startswith(SERVER_SCHEMES):
        return "server"
    if spec.startswith(kinds.HUB_SCHEME):
        kinds.split_handle(spec)  # a malformed handle is refused before anything is imported
        return "hub"
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, "saved_model.pb")):
            return "saved_model"
        if os.path.exists(RunLayout(spec).model):
            return "run"
        if os.path.exists(os.path.join(spec, "config.json")):
            return _LIBRARY_KINDS[kinds.weights_kind(spec)]
        raise ValueError(f"{spec} is a directory with neither model.keras (a run directory), "
                         "saved_model.pb (an exported version) nor config.json (a "
                         "transformers or timm hub model)")
    if not os.path.exists(spec):
        raise ValueError(f"model not found: {spec} (expected {KINDS})")
    _check_regular(spec, "model")
    kind = _LIBRARY_KINDS.get(kinds.weights_kind(spec))
    if kind is None:
        raise ValueError(f"cannot tell what model {spec} is: expected {KINDS}")
    return kind


def load_keras_model(spec: str, architecture: Optional[str] = None):
    """A run directory, ``.keras`` file, ``.npz`` checkpoint, timm ``.safetensors`` file or
    transformers directory -> ``(model, labels)``.

    ``labels`` is the run's ``labels.json`` (``labels.txt``) or a transformers config's
    ``id2label`` (None when unknown). An ``.npz`` is built as ``architecture`` (e.g.
    ``"ViT_B16"``) or, without it, as the architecture its array shapes describe; a timm file
    as its shapes describe (:func:`keras_vit.from_timm`), a transformers directory as its
    ``config.json`` says.
    """

    import keras_vit  # also registers the layers for keras.models.load_model
    kind = model_kind(spec)
    if architecture is not None and kind != "npz":
        raise ValueError(f"--model {architecture} names the architecture of an .npz checkpoint; "
                         f"{spec} is a {kind} model, which says its own")
    if kind == "npz":
        from keras_vit.checkpoint_architecture import model_from_checkpoint
        return model_from_checkpoint(spec, architecture), None
    if kind == "timm":
        return keras_vit.from_timm(spec), None
    if kind in ("transformers", "hub"):
        # from_preset: the checkpoint's own preprocessing (a transformers directory's
        # preprocessor_config.json when it has one) and label names
        model = (keras_vit.from_transformers(spec) if kind == "transformers" and not
                 os.path.exists(os.path.join(spec, "preprocessor_config.json"))
                 else keras_vit.from_preset(spec))
        return model, getattr(model, "class_names", None)
    if kind not in ("run", "keras"):
        raise ValueError(f"{spec} is not a Keras model ({kind}); expected a run directory, a "
                         ".keras file or an .npz checkpoint")
    path = RunLayout(spec).model if kind == "run" else spec
    _check_regular(path, "model")
    from keras_vit.weights import load_keras_model
    model = load_keras_model(path)
    labels = read_run_labels(RunLayout(spec)) if kind == "run" else None
    # a bare .keras file carries the class names it was saved with (keras_vit.models.ViTModel)
    return model, labels or list(getattr(model, "class_names", None) or []) or None


def read_run_labels(run: RunLayout) -> Optional[list]:
    """A run's class names: its ``labels.json`` (exact), else (older runs) its
    ``labels.txt``; None when it has neither."""
    from export.saved_model import read_labels
    for path in (run.labels_json, run.labels):
        if os.path.exists(path):
            return read_labels(path)
    return None


def _check_regular(path: str, what: str, fd: Optional[int] = None) -> os.stat_result:
    """``path``'s status; a ValueError when it is not a regular file (a FIFO or a device
    would block the reader or never end)."""
    status = os.stat(path) if fd is None else os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{what} {path} is not a regular file")
    return status


def read_image_file(path: str, max_bytes: int = MAX_IMAGE_FILE_BYTES) -> bytes:
    """The bytes of an image file; a missing, unreadable, empty or non-regular file, or one
    over ``max_bytes``, is a ValueError naming it, raised before anything is read (the file is
    opened without blocking, so a FIFO does not hang the caller)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        raise ValueError(f"cannot read image {path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as f:
        size = _check_regular(path, "image", fd).st_size
        if size > max_bytes:
            raise ValueError(f"image {path} is {size} bytes, over the limit of {max_bytes} "
                             "bytes for an image file")
        try:
            data = f.read(max_bytes + 1)  # bounded even if the file grew since
        except OSError as error:
            raise ValueError(f"cannot read image {path}: {error.strerror or error}") from None
    if not data:
        raise ValueError(f"image {path} is empty")
    if len(data) > max_bytes:
        raise ValueError(f"image {path} is over the limit of {max_bytes} bytes for an image file")
    return data


def read_image_files(paths: Sequence[str], max_bytes: int = MAX_IMAGE_FILE_BYTES) -> List[bytes]:
    """:func:`read_image_file` of each path."""
    return [read_image_file(path, max_bytes) for path in paths]


def preprocess_file(path: str, data: bytes, image_size, interpolation: str = "bilinear"):
    """An image file's bytes -> (h, w, 3) float32 pixels at ``image_size`` through
    :func:`keras_vit.preprocess_image` (resized with ``interpolation``); an undecodable file
    is a ValueError naming it."""
    import tensorflow as tf

    import keras_vit
    try:
        return keras_vit.preprocess_image(tf.constant(data), image_size,
                                          interpolation=interpolation).numpy()
    except tf.errors.InvalidArgumentError as error:
        detail = keras_vit.preprocessing.error_detail(error)
        raise ValueError(f"invalid input: {path} is not a decodable image (JPEG, PNG, BMP, "
                         f"GIF): {detail}") from None


def load_pixels(model, path: str, data: bytes):
    """:func:`preprocess_file` at the model's resolution, with its interpolation."""
    import keras_vit
    from keras_vit.preprocessing import model_interpolation
    return preprocess_file(path, data, keras_vit.model_image_size(model),
                           model_interpolation(model))


def check_decodable(paths: Sequence[str], images: Sequence[bytes]) -> None:
    """A ValueError naming the first file that does not decode (before it is sent off)."""
    for path, data in zip(paths, images):
        preprocess_file(path, data, 1)


def _top_k(probabilities: np.ndarray, k: int, labels) -> dict:
    order = np.argsort(-probabilities, kind="stable")[:k]
    names = [labels[i] if labels and i < len(labels) else str(int(i)) for i in order]
    return {"classes": [int(i) for i in order], "labels": names,
            "probabilities": [float(probabilities[i]) for i in order]}


def embedding_row(path: str, embedding) -> dict:
    """What ``predict`` says of a headless tower's embedding of one image: the file, the
    embedding's width (``dimension``), its L2 ``norm`` and its values."""
    values = np.asarray(embedding, np.float64)
    return {"file": path, "dimension": int(values.size),
            "norm": float(np.sqrt(np.sum(values * values))),
            "embedding": [float(v) for v in values]}


def predict_keras(model, labels, paths: Sequence[str], top_k: int = 5) -> List[dict]:
    """Top-k predictions of an in-memory keras_vit model for image files (a headless
    tower's: :func:`embedding_row` of each)."""
    images = np.stack([load_pixels(model, p, data)
                       for p, data in zip(paths, read_image_files(paths))])
    from keras_vit.inference import class_probabilities, model_outputs
    from keras_vit.models import has_head
    if not has_head(model):
        return [embedding_row(p, row) for p, row in zip(paths, model_outputs(model, images))]
    probabilities = class_probabilities(model, images)
    return [dict(file=p, **_top_k(row, top_k, labels)) for p, row in zip(paths, probabilities)]


def predict_served(spec: str, paths: Sequence[str], top_k: int = 5,
                   server_model: str = "vit") -> List[dict]:
    """Top-k predictions of an exported version directory (run locally) or a server."""
    from export import client

    from export.signatures import DEFAULT_MAX_BATCH

    images = read_image_files(paths)
    check_decodable(paths, images)
    if not spec.startswith(SERVER_SCHEMES):
        rows = client.predict_saved_model(spec, images)
    else:  # one request per DEFAULT_MAX_BATCH images: a server refuses more (max_batch)
        rows = []
        for start in range(0, len(images), DEFAULT_MAX_BATCH):
            chunk = images[start:start + DEFAULT_MAX_BATCH]
            rows += (client.predict_grpc(spec[len("grpc://"):], chunk, model=server_model)
                     if spec.startswith("grpc://")
                     else client.predict_rest(spec, chunk, model=server_model))
    if rows and "embedding" in rows[0]:  # a headless tower's export
        return [embedding_row(p, row["embedding"]) for p, row in zip(paths, rows)]
    return [{"file": p, "classes": row["classes"][:top_k],
             "labels": (row.get("labels") or [str(c) for c in row["classes"]])[:top_k],
             "probabilities": row["scores"][:top_k]} for p, row in zip(paths, rows)]


def predict(spec: str, paths: Sequence[str], top_k: int = 5,
            architecture: Optional[str] = None, server_model: str = "vit") -> List[dict]:
    """Top-k predictions of any model (see the module docstring) for image files: one dict
    per image with ``file``, ``classes``, ``labels`` and ``probabilities``; for a headless
    tower (no head: an embedding out), ``file``, ``dimension``, ``norm`` and ``embedding``
    (:func:`embedding_row`)."""
    if top_k < 1:
        raise ValueError(f"--top-k must be positive, got {top_k}")
    if model_kind(spec) in ("server", "saved_model"):
        return predict_served(spec, paths, top_k, server_model)
    model, labels = load_keras_model(spec, architecture)
    return predict_keras(model, labels, paths, top_k)


def shown_label(name: str) -> str:
    """A class name as a line of text shows it: as it is, or quoted and escaped (JSON) when
    it is blank, has surrounding whitespace or a character that is not printable."""
    return name if name and name.isprintable() and name == name.strip() else json.dumps(name)


def format_predictions(rows: Sequence[dict], as_json: bool = False) -> str:
    """One line per image (``file: label p, ...``; a headless tower's: ``file: embedding of D
    values, L2 norm N``), or one JSON document (with the embeddings' values)."""
    if as_json:
        return json.dumps({"predictions": list(rows)}, indent=2)
    if rows and "embedding" in rows[0]:
        return "\n".join(f"{row['file']}: embedding of {row['dimension']} values, L2 norm "
                         f"{row['norm']:.4g}" for row in rows)
    return "\n".join(f"{row['file']}: " + ", ".join(
        f"{shown_label(name)} {p:.3f}" for name, p in zip(row["labels"], row["probabilities"]))
        for row in rows)
