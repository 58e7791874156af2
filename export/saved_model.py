"""Writing a TF Serving model version atomically, and the ``models.config`` beside it."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from typing import Optional, Sequence

import keras
import numpy as np

import keras_vit
from export.signatures import SIGNATURES, make_serving_functions

logger = logging.getLogger("keras_vit.export")


class ExportError(RuntimeError):
    """The export could not be written; nothing was left behind."""


EXPORT_INFO = os.path.join("assets.extra", "keras_vit_export.json")


def write_export_info(version_dir: str, info: dict) -> None:
    """How the version was made (precision, frozen), read back by the verification."""
    path = os.path.join(version_dir, EXPORT_INFO)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)


def read_export_info(version_dir: str) -> dict:
    path = os.path.join(version_dir, EXPORT_INFO)
    if not os.path.exists(path):
        return {"precision": "float32", "frozen": False}
    with open(path) as f:
        return json.load(f)


def next_version(model_dir: str) -> int:
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()] \
        if os.path.isdir(model_dir) else []
    return max(versions, default=0) + 1


def update_models_config(base_dir: str, name: str) -> str:
    """Adds ``name`` to ``<base>/models.config`` (text-format model_config_list)."""
    path = os.path.join(base_dir, "models.config")
    entries = {}
    if os.path.exists(path):
        text = open(path).read()
        for found, base in re.findall(r'name:\s*"([^"]+)"\s*base_path:\s*"([^"]+)"', text):
            entries[found] = base
    entries[name] = os.path.abspath(os.path.join(base_dir, name))
    body = "".join(f'  config {{\n    name: "{n}"\n    base_path: "{b}"\n'
                   f'    model_platform: "tensorflow"\n  }}\n' for n, b in sorted(entries.items()))
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("model_config_list {\n" + body + "}\n")
    os.replace(tmp, path)
    return path


def export_saved_model(model: keras.Model, base_dir: str, name: str = "vit",
                       version: Optional[int] = None, image_size=None,
                       labels: Optional[Sequence[str]] = None, top_k: int = 5,
                       overwrite: bool = False, warmup: bool = True, frozen: bool = False,
                       precision: str = "float32") -> str:
    """Writes ``<base_dir>/<name>/<version>/`` for TF Serving and returns its path.

    Signatures ``serving_default`` (``image_bytes``: JPEG/PNG/BMP/GIF strings) and
    ``serving_images`` (``images``: float pixels in [0, 255], any size), both returning
    ``probabilities``, ``scores`` / ``classes`` (top ``top_k``) and ``labels`` when class
    names are given. ``image_size`` exports at another resolution (position embeddings
    resized). The version is written to a temporary directory and renamed into place, so
    a polling server never sees half of it; an existing version is kept unless ``overwrite``.

    ``frozen=True`` writes the fast CPU serving graph (:mod:`export.frozen`): weights as
    constants, LayerNorm and attention scale folded into the projections, stored in
    ``precision`` (``"float32"`` or ``"bfloat16"``); same signatures, float32 outputs.
    ``precision="bfloat16"`` without ``frozen`` keeps the weights as bfloat16 variables.
    The default (variables, float32) is the model exactly as trained.
    """
    from export.frozen import check_precision, frozen_logits_function
    check_precision(precision)
    num_classes = model.output_shape[-1]
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise ValueError(f"model name {name!r} must be letters, digits, '_', '.' or '-'")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if image_size is not None:
        model = keras_vit.model_at_resolution(model, image_size)
    size = keras_vit.model_image_size(model)
    model_dir = os.path.join(base_dir, name)
    os.makedirs(model_dir, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    final = os.path.join(model_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise ExportError(f"version {final} already exists; pass overwrite=True (--overwrite) "
                          "or another version")

    archive = keras.export.ExportArchive()
    if frozen:
        logits_fn = frozen_logits_function(model, size, precision)
    else:
        served = model if precision == "float32" else keras_vit.inference_model(model, precision)
        archive.track(served)

        def logits_fn(images):
            return served(images, training=False)
    serve_bytes, serve_images = make_serving_functions(logits_fn, num_classes, size, labels,
                                                       top_k)
    archive.add_endpoint("serving_default", serve_bytes,
                         input_signature=[SIGNATURES["serving_default"]])
    archive.add_endpoint("serving_images", serve_images,
                         input_signature=[SIGNATURES["serving_images"]])
    tmp = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        archive.write_out(tmp, verbose=False)
        write_export_info(tmp, {"precision": precision, "frozen": bool(frozen)})
        if warmup:
            try:
                from export.warmup import write_warmup
                write_warmup(tmp, name)
            except ImportError:
                logger.warning("tensorflow-serving-api is not installed: no warm-up file "
                               "written (pip install 'keras-vit[serving]')")
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o755)
            for f in files:
                os.chmod(os.path.join(root, f), 0o644)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700: a server running as another user
        if os.path.exists(final):  # overwrite=True
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as error:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, (ExportError, KeyboardInterrupt)):
            raise
        raise ExportError(f"export to {final} failed, nothing was written: "
                          f"{type(error).__name__}: {error}") from error
    update_models_config(base_dir, name)
    return final


def read_labels(path: str) -> list:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def keras_probabilities(model, image_bytes: Sequence[bytes]) -> np.ndarray:
    """The in-memory model's probabilities for encoded images, through the same
    preprocessing as the export (for comparisons)."""
    import tensorflow as tf
    size = keras_vit.model_image_size(model)
    images = tf.stack([keras_vit.preprocess_image(tf.constant(b), size) for b in image_bytes])
    return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)).numpy()
