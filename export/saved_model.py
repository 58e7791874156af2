"""Writing a TF Serving model version atomically, and the ``models.config`` beside it."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

import keras_vit
from export.models_config import register_model
from export.signatures import DEFAULT_MAX_BATCH, SIGNATURES, make_serving_functions
from export.versions import (VersionExists, check_name, check_version, claim_version,
                             existing_versions, publish)
from keras_vit.preprocessing import DEFAULT_MAX_PIXELS, model_interpolation

logger = logging.getLogger("keras_vit.export")


class ExportError(RuntimeError):
    """The export failed. Nothing was left behind, unless the message says the version was
    written (when only models.config could not be updated)."""


EXPORT_INFO = os.path.join("assets.extra", "keras_vit_export.json")


def write_export_info(version_dir: str, info: dict) -> None:
    """How the version was made (precision, frozen, pixel limit, source model), read back by
    the verification."""
    path = os.path.join(version_dir, EXPORT_INFO)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(info, f, indent=2)


def read_export_info(version_dir: str) -> dict:
    path = os.path.join(version_dir, EXPORT_INFO)
    if not os.path.exists(path):
        return {"precision": "float32", "frozen": False}
    from keras_vit.sources import read_json
    return read_json(path)


def model_fingerprint(model: keras.Model) -> str:
    """sha256 of the model's weights (shapes and values): which model an export came from."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(f"{value.dtype}:{value.shape};".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def check_finite_weights(model: keras.Model) -> None:
    """ExportError naming the weights that hold NaN or inf: such a model serves NaN."""
    bad = [weight.path for weight in model.weights
           if not np.isfinite(keras.ops.convert_to_numpy(weight)).all()]
    if bad:
        raise ExportError(f"model {model.name!r} has non-finite weights (NaN or inf) in "
                          f"{len(bad)} variable(s), first {bad[0]}: nothing was exported")


def version_of(model: keras.Model, base_dir: str, name: str) -> Optional[str]:
    """The newest version of ``name`` under ``base_dir`` exported from exactly ``model``'s
    weights (its recorded fingerprint), or None: a resumed run that was killed after its
    export reuses it instead of writing the same model again as the next version."""
    model_dir = os.path.join(base_dir, name)
    wanted = None
    for version in reversed(existing_versions(model_dir)):
        directory = os.path.join(model_dir, str(version))
        recorded = read_export_info(directory).get("source", {}).get("weights_sha256")
        if recorded is None:
            continue
        wanted = wanted or model_fingerprint(model)
        if recorded == wanted:
            return directory
    return None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def output_kind(model: keras.Model) -> str:
    """``"classes"`` for a classifier, ``"embedding"`` for a headless tower (a keras_vit model
    without a head, :func:`keras_vit.models.has_head`): what its export serves."""
    from keras_vit.models import has_head
    return "classes" if has_head(model) else "embedding"


def _check_arguments(model, name, version, labels, top_k, max_pixels, max_batch):
    check_name(name)
    check_version(version)
    num_classes = model.output_shape[-1]
    if labels is not None and output_kind(model) == "embedding":
        raise ValueError(f"labels given for model {model.name!r}, which has no head (its "
                         f"output is a {num_classes}-wide embedding, served as 'embedding')")
    if labels is not None and len(labels) != num_classes:
        raise ValueError(f"{len(labels)} labels given for a model with {num_classes} classes")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    _positive_int("max_pixels", max_pixels)
    _positive_int("max_batch", max_batch)


def _track_variables_once(archive, model):
    """Tracks the model's weights as the ``tf.Variable``s its endpoints read.

    ``ExportArchive.track(model)`` records each weight twice: as the Keras variable and, when
    writing, as the ``tf.Variable`` inside it that the endpoints capture. Both go into the
    checkpoint and both are created and restored by the loader, so the SavedModel's
    ``variables/`` and a server's memory held two copies of every weight. Listing the inner
    variables (the same objects the endpoints use) keeps one; ``variables`` of the reloaded
    object still lists them. The model holds no lookup tables or other resources that
    ``track`` would also collect.
    """
    inner = [variable.value for variable in model.weights]
    if not all(isinstance(v, tf.Variable) for v in inner):
        raise TypeError("the model's weights are not backed by tf.Variables "
                        "(export needs the TensorFlow backend)")
    archive.add_variable_collection("variables", inner)
    archive.add_variable_collection(
        "trainable_variables", [v.value for v in model.trainable_weights])
    archive.add_variable_collection(
        "non_trainable_variables", [v.value for v in model.non_trainable_weights])


def _build_archive(model, labels, top_k, frozen, precision, max_pixels, max_batch):
    """An ExportArchive with one endpoint per entry of the signature table."""
    from export.frozen import frozen_logits_function
    size = keras_vit.model_image_size(model)
    archive = keras.export.ExportArchive()
    if frozen:
        logits_fn = frozen_logits_function(model, size, precision)
    else:
        served = model if precision == "float32" else keras_vit.inference_model(model, precision)
        _track_variables_once(archive, served)

        def logits_fn(images):
            return served(images, training=False)
    num_classes = model.output_shape[-1] if output_kind(model) == "classes" else None
    functions = make_serving_functions(logits_fn, num_classes, size, labels, top_k,
                                       max_pixels, max_batch, model_interpolation(model))
    for sig in SIGNATURES:
        archive.add_endpoint(sig.name, functions[sig.name], input_signature=[sig.spec()])
    return archive


def _write_version(archive, directory, name, info, warmup):
    archive.write_out(directory, verbose=False)
    write_export_info(directory, info)
    if warmup:
        try:
            from export.warmup import write_warmup
            write_warmup(directory, name, info["max_pixels"], info["max_batch"])
        except ImportError:
            logger.warning("tensorflow-serving-api is not installed: no warm-up file "
                           "written (pip install 'keras-vit[serving]')")


def export_saved_model(model: keras.Model, base_dir: str, name: str = "vit",
                       version: Optional[int] = None, image_size=None,
                       labels: Optional[Sequence[str]] = None, top_k: int = 5,
                       overwrite: bool = False, warmup: bool = True, frozen: bool = False,
                       precision: str = "float32",
                       max_pixels: int = DEFAULT_MAX_PIXELS,
                       max_batch: int = DEFAULT_MAX_BATCH) -> str:
    """Writes ``<base_dir>/<name>/<version>/`` for TF Serving and returns its path.

    Signatures (:data:`export.signatures.SIGNATURES`) ``serving_default`` (``image_bytes``:
    JPEG/PNG/GIF/BMP strings) and ``serving_images`` (``images``: float pixels in [0, 255],
    any size), both returning ``probabilities``, ``scores`` / ``classes`` (top ``top_k``) and
    ``labels`` when class names are known (``labels``, else the model's ``class_names``: a
    published ImageNet-1k head's, a transformers config's). A model without a head (a
    headless tower, ``include_top=False``) serves its output as ``embedding`` instead
    (float32, not normalised; :data:`export.signatures.EMBEDDING_OUTPUTS`); it takes no
    ``labels``. An encoded image over ``max_pixels``
    pixels (read from its header) or in another format is refused with InvalidArgument before it
    is decoded. A request of more than ``max_batch`` images (default
    :data:`export.signatures.DEFAULT_MAX_BATCH`, 64) is refused with InvalidArgument before
    anything is decoded: a request's memory does not grow past that batch's.
    ``image_size`` exports at another resolution (position embeddings resized).

    ``version`` is a positive integer (default: the next free one, claimed under a lock, so
    concurrent exports get distinct versions). The version is staged in a temporary
    directory and renamed into place, so a polling server never sees half of it; an
    existing version is kept unless ``overwrite``. ``<base_dir>/models.config`` lists the
    model (every other entry and field kept).

    ``frozen=True`` writes the constant-weight CPU serving graph (:mod:`export.frozen`; a
    server with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` gets its kernels from the default
    export at about a quarter of the memory): weights as constants, LayerNorm and attention
    scale folded into the projections, stored in ``precision`` (``"float32"`` or
    ``"bfloat16"``); same signatures, float32 outputs.
    ``precision="bfloat16"`` without ``frozen`` keeps the weights as bfloat16 variables.
    The default (variables, float32) is the model exactly as trained.
    """
    from export.frozen import check_precision
    check_precision(precision)
    if not labels:  # (a headless tower's class_names are [])
        labels = list(getattr(model, "class_names", None) or []) or None
    _check_arguments(model, name, version, labels, top_k, max_pixels, max_batch)
    check_finite_weights(model)
    info = {"precision": precision, "frozen": bool(frozen), "max_pixels": max_pixels,
            "max_batch": max_batch, "outputs": output_kind(model),
            "source": {"name": model.name, "weights_sha256": model_fingerprint(model)}}
    if image_size is not None:
        model = keras_vit.model_at_resolution(model, image_size)
    archive = _build_archive(model, labels, top_k, frozen, precision, max_pixels, max_batch)
    final = _publish_version(archive, base_dir, name, version, overwrite, info, warmup)
    _register(base_dir, name, final)
    return final


def _publish_version(archive, base_dir, name, version, overwrite, info, warmup) -> str:
    """Writes the version in a staging directory claimed under the lock, then renames it
    into place; returns its path. Any failure: nothing was written."""
    model_dir = os.path.join(base_dir, name)
    if version is not None and os.path.lexists(os.path.join(model_dir, str(version))) \
            and not overwrite:  # fail early; claim_version checks again under the lock
        raise ExportError(f"version {os.path.join(model_dir, str(version))} already exists; "
                          "pass overwrite=True (--overwrite) or another version")
    try:
        with claim_version(model_dir, version, overwrite) as (version, staging):
            final = os.path.join(model_dir, str(version))
            _write_version(archive, staging, name, info, warmup)
            publish(staging, final)
    except VersionExists as error:
        raise ExportError(str(error)) from None
    except BaseException as error:
        if isinstance(error, (ExportError, KeyboardInterrupt)):
            raise
        raise ExportError(f"export to {model_dir} failed, nothing was written: "
                          f"{type(error).__name__}: {error}") from error
    return final


def _register(base_dir: str, name: str, final: str) -> None:
    """Lists the model in ``<base_dir>/models.config`` (the version is live already)."""
    try:
        register_model(base_dir, name)
    except Exception as error:
        raise ExportError(f"version {final} was written and is live (a server polling "
                          f"{os.path.join(base_dir, name)} will load it), but "
                          f"{base_dir}/models.config was not updated: {error}") from error


def read_labels(path: str) -> list:
    """A ``.json`` file: a JSON list of class names, exactly (a run's ``labels.json``).
    Otherwise one class name a line; trailing empty lines are ignored, a blank one in
    between (which would shift every later label) is an error."""
    if path.endswith(".json"):
        from export.run_layout import parse_labels_json
        with open(path, "rb") as f:
            return parse_labels_json(f.read(), path)
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ValueError(f"{path}: line {number} is blank (one class name a line)")
    return [line.strip() for line in lines]


def keras_outputs(model, image_bytes: Sequence[bytes]) -> np.ndarray:
    """The in-memory model's float32 outputs (logits, or a headless tower's embeddings) for
    encoded images, through the same preprocessing as the export (for comparisons)."""
    size, method = keras_vit.model_image_size(model), model_interpolation(model)
    images = tf.stack([keras_vit.preprocess_image(tf.constant(b), size, interpolation=method)
                       for b in image_bytes])
    return tf.cast(model(images, training=False), tf.float32).numpy()


def embedding_difference(want, got) -> float:
    """How far embeddings ``got`` are from ``want``: the largest |got - want| over the
    largest |want| (inf where ``got`` is not finite), the measure verification and the
    portable files' checks hold a headless tower's outputs to."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-30)


def keras_probabilities(model, image_bytes: Sequence[bytes]) -> np.ndarray:
    """The in-memory model's probabilities for encoded images, through the same
    preprocessing as the export (for comparisons)."""
    return tf.nn.softmax(keras_outputs(model, image_bytes)).numpy()
