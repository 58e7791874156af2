"""One-file exports for phones, browsers and ONNX Runtime: LiteRT (``.tflite``) and ONNX.

The file takes float pixels in [0, 255] (NHWC, any batch, at the model's resolution: the model's
own first layer rescales them) and returns float32 ``probabilities`` (softmax of the logits;
a headless tower's file returns its ``embedding`` instead, as the model computes it),
computed in float32 (also for a model trained under a mixed-precision policy). The converters
are the maintained ones, through Keras's ``model.export``: the LiteRT converter shipped with
TensorFlow (builtin ops only, so the file runs without the Flex delegate) and tf2onnx. Each file
is checked with its own runtime against the Keras model before it is renamed into place; an
existing file is kept unless ``overwrite``.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import warnings
from typing import Optional

import keras
import numpy as np

import keras_vit
from keras_vit.inference import class_probabilities, model_outputs
from keras_vit.models import has_head
from export.progress import Progress
from export.runtimes import runner
from export.saved_model import ExportError, check_finite_weights, embedding_difference

FORMATS = ("litert", "onnx")
SUFFIXES = {"litert": ".tflite", "onnx": ".onnx"}
QUANTIZATIONS = ("float16", "dynamic_int8")

# Per format: (largest |probability - Keras probability|, top-2 gap in Keras under which
# top-1 may flip), what a correct file stays within on the verification images. Measured on
# the digits demo model over its 360 test images and on ViT-B/16 (docs/portable.md, "Size, speed
# and agreement"), with a margin of about 2x: float16 8.5e-3, int8 0.11 measured. Within the
# first number, top-1 agrees wherever the top two are more than twice it apart; the second
# is stricter for the quantised files.
TOLERANCES = {("litert", None): (1e-5, 2e-5), ("onnx", None): (1e-5, 2e-5),
              ("litert", "float16"): (2e-2, 1e-2), ("litert", "dynamic_int8"): (0.25, 0.05)}

VERIFICATION_IMAGES = 8  # digits, plus two colour images (the digits are grey: R = G = B)


def check_options(fmt: str, quantization: Optional[str]) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if quantization is not None and (fmt, quantization) not in TOLERANCES:
        raise ValueError(f"quantization {quantization!r} is not available for {fmt} (LiteRT "
                         f"takes {', '.join(QUANTIZATIONS)}; ONNX none)")


def probability_model(model: keras.Model) -> keras.Model:
    """``model`` at its own resolution, float32, without dropout, with a softmax on top:
    ``{"images": pixels in [0, 255]} -> {"probabilities": ...}``; a headless tower
    (:func:`keras_vit.models.has_head`) without one: ``-> {"embedding": ...}``."""
    if "rescaling" not in [layer.name for layer in model.layers]:
        raise ValueError(f"model {model.name!r} was built with include_preprocessing=False: "
                         "the exported file would take [-1, 1] inputs, not pixels")
    inference = keras_vit.inference_model(model, "float32", fold=False)
    height, width = keras_vit.model_image_size(model)
    images = keras.Input((height, width, 3), name="images")
    if not has_head(model):
        embedding = keras.layers.Identity(name="embedding", dtype="float32")(inference(images))
        return keras.Model(images, {"embedding": embedding}, name=model.name)
    probabilities = keras.layers.Softmax(name="probabilities", dtype="float32")(
        inference(images))
    return keras.Model(images, {"probabilities": probabilities}, name=model.name)


def _convert(wrapper: keras.Model, fmt: str, quantization: Optional[str], path: str) -> None:
    import tensorflow as tf
    if fmt == "onnx":
        height, width = wrapper.input_shape[1:3]
        with warnings.catch_warnings():  # Keras's numpy-2 patch of tf2onnx touches np.object
            warnings.simplefilter("ignore", FutureWarning)
            wrapper.export(path, format="onnx", verbose=False, input_signature=[
                tf.TensorSpec((None, height, width, 3), tf.float32, name="images")])
        return
    options = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantization is not None:  # weights stored quantised, activations float
        options["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        options["target_spec"]["supported_types"] = [tf.float16]
    wrapper.export(path, format="litert", verbose=False, **options)


def verification_images(image_size, count: int = VERIFICATION_IMAGES) -> np.ndarray:
    """``count`` real images and two colour ones at ``image_size``, raw pixels through
    :func:`keras_vit.preprocess_image`: the last handwritten digits of scikit-learn's bundled
    set (grey, so blind to channel order) and :func:`export.warmup.sample_image` (gradients
    in red and green, noise in blue)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from export.warmup import sample_image
    digits = np.round(load_digits().images[-count:] * (255.0 / 16.0)).astype(np.uint8)
    images = list(np.repeat(digits[..., None], 3, axis=-1))
    images += [sample_image(48, 40, seed) for seed in (0, 1)]
    return np.stack([keras_vit.preprocess_image(tf.constant(image), image_size).numpy()
                     for image in images])


def compare(want: np.ndarray, got: np.ndarray, tolerance: float,
            tie: float = 0.0) -> dict:
    """Max probability difference and top-1 agreement of ``got`` against ``want``; ``ok``
    when the difference is within ``tolerance`` and top-1 agrees on every image whose top
    two (in ``want``) are more than ``tie`` apart."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if got.shape != want.shape:
        return {"ok": False, "problem": f"output shape {got.shape}, expected {want.shape}"}
    diff = float(np.abs(got - want).max()) if np.isfinite(got).all() else float("inf")
    top2 = np.sort(want, axis=-1)[:, -2:]
    disagree = want.argmax(-1) != got.argmax(-1)
    flipped = int((disagree & (top2[:, 1] - top2[:, 0] > tie)).sum())
    report = {"images": len(want), "max_abs_diff": diff, "tolerance": tolerance,
              "top1_agree": int((~disagree).sum())}
    problems = []
    if diff > tolerance:
        problems.append(f"max probability difference {diff:.3g} > {tolerance:g}")
    if flipped:
        problems.append(f"top-1 differs on {flipped} image(s) whose top two are more than "
                        f"{tie:g} apart")
    report["ok"] = not problems
    if problems:
        report["problem"] = "; ".join(problems)
    return report


def compare_embeddings(want: np.ndarray, got: np.ndarray, tolerance: float) -> dict:
    """A headless tower's embeddings ``got`` against ``want``: ``ok`` when the largest
    difference is within ``tolerance`` times the largest |value| of ``want``
    (``max_abs_diff`` is that ratio)."""
    if np.shape(got) != np.shape(want):
        return {"ok": False, "problem": f"output shape {np.shape(got)}, expected "
                                        f"{np.shape(want)}"}
    diff = embedding_difference(want, got)
    report = {"images": len(want), "max_abs_diff": diff, "tolerance": tolerance,
              "embedding": True, "ok": diff <= tolerance}
    if not report["ok"]:
        report["problem"] = (f"max embedding difference {diff:.3g} of its largest value "
                             f"> {tolerance:g}")
    return report


def verify_file(path: str, model: keras.Model, fmt: str, quantization: Optional[str] = None,
                images: Optional[np.ndarray] = None) -> dict:
    """Runs ``path`` with its own runtime and ``model`` in Keras on ``images`` (default:
    :func:`verification_images`) and compares them (:func:`compare`, per-format
    :data:`TOLERANCES`; a mixed-precision ``model`` is compared in float32, as the file
    computes): a report with ``ok``, ``max_abs_diff``, ``top1_agree`` of
    ``images``, and ``problem`` when not ok."""
    check_options(fmt, quantization)
    if images is None:
        images = verification_images(keras_vit.model_image_size(model))
    if any(layer.compute_dtype != "float32" for layer in model.layers):
        # A mixed-precision model: the file computes in float32 (probability_model), so
        # the reference is the float32 copy of the same weights.
        model = keras_vit.inference_model(model, "float32", fold=False)
    got = runner(fmt, path)(images)
    if not has_head(model):  # the same numbers, relative to the largest |value|
        return compare_embeddings(model_outputs(model, images), got,
                                  TOLERANCES[(fmt, quantization)][0])
    return compare(class_probabilities(model, images), got, *TOLERANCES[(fmt, quantization)])


def format_verification(path: str, report: dict) -> str:
    if "max_abs_diff" not in report:
        return f"{path}: FAILED: {report['problem']}"
    if report.get("embedding"):
        line = (f"{path}: embeddings of {report['images']} images, max difference "
                f"{report['max_abs_diff']:.2g} of the largest value (tolerance "
                f"{report['tolerance']:g})")
        return line if report["ok"] else f"{line}: FAILED: {report['problem']}"
    line = (f"{path}: top-1 agrees on {report['top1_agree']}/{report['images']} images, "
            f"max probability difference {report['max_abs_diff']:.2g} "
            f"(tolerance {report['tolerance']:g})")
    return line if report["ok"] else f"{line}: FAILED: {report['problem']}"


def _publish(staged: str, path: str, overwrite: bool) -> None:
    """Moves the staged file to ``path``; without ``overwrite`` a file already there (even
    one created meanwhile) is kept: the link fails instead. On a filesystem without hard
    links the file is copied into a path created exclusively (``O_EXCL``), which keeps that
    promise (a reader may then see the file while it is being copied)."""
    os.chmod(staged, 0o644)
    if overwrite:
        os.replace(staged, path)
        return
    try:
        os.link(staged, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError:  # no hard links here (EPERM, ENOTSUP, ...)
        try:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise _exists(path) from None
        with os.fdopen(target, "wb") as out, open(staged, "rb") as source:
            shutil.copyfileobj(source, out)
    os.unlink(staged)


def _exists(path: str) -> ExportError:
    return ExportError(f"{path} already exists; pass overwrite=True (--overwrite) or another "
                       "path")


def _staging_prefix() -> str:
    """Names a staging file after this host and process, so that a later export can tell an
    abandoned one (its process gone) from one being written."""
    return f".tmp-{socket.gethostname()}-{os.getpid()}-"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process; not a pid at all
        return True
    return True


def remove_abandoned_staging(directory: str, suffix: str) -> list:
    """Removes the staging files in ``directory`` left by exports on this host whose process
    is gone (killed before it could clean up); returns their names. Only names exactly of the
    form :func:`_staging_prefix` + ``tempfile``'s 8 characters + ``suffix`` are touched, so
    files of live processes, of other hosts (a shared filesystem; a host name may contain
    ``-``) and anything else are left alone; a directory that cannot be listed, or a file
    that cannot be removed, is left as it is and the export goes on."""
    pattern = re.compile(rf"\.tmp-{re.escape(socket.gethostname())}-([0-9]{{1,10}})-"
                         rf"[a-z0-9_]{{8}}{re.escape(suffix)}", re.ASCII)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _process_exists(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(name)
        except OSError:  # removed by another export first, or not ours to remove
            pass
    return removed


def _missing_directories(directory: str) -> list:
    """``directory`` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while directory and not os.path.exists(directory):
        missing.append(directory)
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return missing


def export_file(model: keras.Model, path: str, fmt: str, quantization: Optional[str] = None,
                overwrite: bool = False, verify: bool = True,
                images: Optional[np.ndarray] = None) -> dict:
    """Writes ``model`` as a ``fmt`` file at ``path`` and returns the verification report
    (``{}`` when ``verify=False``). A file that fails verification is not written."""
    check_options(fmt, quantization)
    check_finite_weights(model)
    if not path.endswith(SUFFIXES[fmt]):
        raise ValueError(f"{fmt} file name must end with {SUFFIXES[fmt]}: {path}")
    if os.path.lexists(path) and not overwrite:
        raise _exists(path)
    directory = os.path.dirname(os.path.abspath(path))
    created = _missing_directories(directory)
    os.makedirs(directory, exist_ok=True)
    remove_abandoned_staging(directory, SUFFIXES[fmt])
    wrapper = probability_model(model)
    fd, staged = tempfile.mkstemp(prefix=_staging_prefix(), suffix=SUFFIXES[fmt], dir=directory)
    os.close(fd)
    published = False
    try:
        progress = Progress(2 if verify else 1, unit="stage")  # shown on a terminal
        try:
            _convert(wrapper, fmt, quantization, staged)
            progress.advance()
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ExportError(f"{fmt} conversion of {model.name!r} failed, nothing was "
                              f"written: {type(error).__name__}: {first}") from error
        report = verify_file(staged, model, fmt, quantization, images) if verify else {}
        progress.advance(1 if verify else 0)
        if report and not report["ok"]:
            raise ExportError(f"{format_verification(path, report)}; nothing was written")
        _publish(staged, path, overwrite)
        published = True
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
        if not published:  # the directories this export made go with it (when empty)
            for made in created:
                try:
                    os.rmdir(made)
                except OSError:
                    break
    return report


def export_litert(model: keras.Model, path: str, quantization: Optional[str] = None,
                  overwrite: bool = False, verify: bool = True) -> dict:
    """Writes a LiteRT file (``.tflite``): float pixels [0, 255] in, probabilities out.

    ``quantization``: None (float32), ``"float16"`` (weights stored as float16, half the
    size) or ``"dynamic_int8"`` (dynamic-range: int8 weights, activations quantised on the
    fly; a quarter of the size). The file is checked with the LiteRT interpreter against
    the Keras model on real images before it is renamed into place (``verify``); returns
    that report.
    """
    return export_file(model, path, "litert", quantization, overwrite, verify)


def export_onnx(model: keras.Model, path: str, overwrite: bool = False,
                verify: bool = True) -> dict:
    """Writes an ONNX file (``.onnx``, input ``images``, output ``probabilities``) with
    tf2onnx, checked with ONNX Runtime against the Keras model (see :func:`export_litert`)."""
    return export_file(model, path, "onnx", None, overwrite, verify)
