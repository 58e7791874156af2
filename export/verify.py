"""Verifying an exported version the way TF Serving will load it.

In a fresh process that does not import keras_vit: the TF1-session SavedModel loader,
signatures against the contract, every op (graph and function library) against the stock
op registry, no py_function, no function marked for XLA, every warm-up record replayed, a
predict on real image bytes; then the served probabilities are compared with the Keras
model's on the same bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np

from export.progress import Progress
from export.saved_model import (embedding_difference, keras_outputs, keras_probabilities,
                                model_fingerprint, read_export_info)
from export.signatures import OPTIONAL_OUTPUTS, PREDICT_METHOD, SIGNATURES, outputs_of
from export.warmup import fit_size, sample_image

SESSION_CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "session_check.py")
# Largest |served - Keras| probability accepted, by the export's precision; for an
# embedding export, the largest |served - Keras| over the largest |Keras| value.
TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}


def expected_signatures(width: Optional[int], kind: str = "classes") -> dict:
    """From the signature table: ``{name: (inputs, outputs)}``, each ``{key: (dtype,
    shape)}``; None in a shape matches any size (the model's output width, its class count
    or embedding width, when it is unknown; top-k). ``kind``: what the version serves
    (:data:`export.signatures.OUTPUT_KINDS`)."""
    sizes = {"K": width, "D": width, "k": None}
    outputs = {key: (dtype, [sizes.get(d, d) for d in shape])
               for key, (dtype, shape) in outputs_of(kind).items()}
    return {sig.name: ({sig.input_key: (sig.dtype, list(sig.shape))}, outputs)
            for sig in SIGNATURES}


def _shape_ok(found, expected):
    if found is None or len(found) != len(expected):
        return False
    return all(e is None or f == e for f, e in zip(found, expected))


def sample_image_files(directory: str, max_pixels: Optional[int] = None):
    """A JPEG and a PNG of different sizes (within ``max_pixels``), written for the checks."""
    import tensorflow as tf
    files = []
    for i, (h, w, encode, ext) in enumerate([(64, 64, tf.io.encode_jpeg, "jpg"),
                                             (50, 90, tf.io.encode_png, "png")]):
        h, w = fit_size(h, w, max_pixels)
        path = os.path.join(directory, f"sample{i}.{ext}")
        with open(path, "wb") as f:
            f.write(encode(sample_image(h, w, seed=10 + i)).numpy())
        files.append(path)
    return files


def _run_session_check(version_dir, image_files, directory, timeout):
    """The session check's report (a dict), or a string saying why there is none."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("PYTHONPATH", None)  # nothing of this project on the path
    result = subprocess.run([sys.executable, SESSION_CHECK, version_dir, *image_files],
                            capture_output=True, text=True, timeout=timeout, env=env,
                            cwd=directory)
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return "the session loader failed: " + " | ".join(tail)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _signature_failures(found_signatures, width, kind):
    failures = []
    for name, (inputs, outputs) in expected_signatures(width, kind).items():
        sig = found_signatures.get(name)
        if sig is None:
            failures.append(f"missing signature {name!r}")
            continue
        if sig["method"] != PREDICT_METHOD:
            failures.append(f"{name}: method {sig['method']!r}, expected {PREDICT_METHOD!r}")
        for group, expected, found in (("input", inputs, sig["inputs"]),
                                       ("output", outputs, sig["outputs"])):
            for key, (dtype, shape) in expected.items():
                if key not in found:
                    failures.append(f"{name}: missing {group} {key!r}")
                elif found[key]["dtype"] != dtype or not _shape_ok(found[key]["shape"], shape):
                    failures.append(f"{name}: {group} {key!r} is {found[key]['dtype']} "
                                    f"{found[key]['shape']}, expected {dtype} {shape}")
        for key, (dtype, _) in OPTIONAL_OUTPUTS.items():
            if key in sig["outputs"] and sig["outputs"][key]["dtype"] != dtype:
                failures.append(f"{name}: output {key!r} must be a {dtype} tensor")
    return failures


def _graph_failures(report):
    """Ops, XLA marks, warm-up replay and the imports of the check."""
    failures = []
    if report["unregistered_ops"]:
        failures.append(f"ops not in the stock registry: {report['unregistered_ops']}")
    if report["forbidden_ops"]:
        failures.append(f"py_function ops cannot run in TF Serving: {report['forbidden_ops']}")
    if report["xla_functions"]:
        failures.append(f"functions marked jit_compile (TF Serving runs without XLA): "
                        f"{report['xla_functions'][:3]}")
    if report["warmup"]["records"] == 0:
        failures.append("no warm-up records (assets.extra/tf_serving_warmup_requests)")
    failures += [f"warm-up {e}" for e in report["warmup"]["errors"]]
    if report["loaded_modules"]:
        failures.append(f"the check imported {report['loaded_modules']}")
    return failures


def _served(predict, key):
    """(the served output ``key`` of the predict on real image bytes, failures)."""
    if predict is None:
        return None, ["no predict was run (serving_default missing)"]
    if "error" in predict:
        return None, [f"predict on real image bytes failed: {predict['error']}"]
    if key not in predict:
        return None, [f"the predict on real image bytes returned no {key!r}"]
    return np.asarray(predict[key], np.float32), []


def _embedding_failures(predict, keras_embedding, rtol):
    """(failures, max |served - Keras| / max |Keras|) of an embedding export."""
    served, failures = _served(predict, "embedding")
    if failures:
        return failures, None
    if not np.isfinite(served).all():
        return ["served embeddings are not finite (NaN or inf)"], None
    if keras_embedding is None:
        return [], None
    if served.shape != keras_embedding.shape:
        return [f"served embeddings have shape {served.shape}, Keras model "
                f"{keras_embedding.shape}"], None
    diff = embedding_difference(keras_embedding, served)
    if not diff <= rtol:  # NaN or inf from the Keras model fail too
        return [f"served and Keras embeddings differ by {diff:.3g} of their largest value "
                f"(> {rtol})"], diff
    return [], diff


def _agreement_failures(predict, keras_probs, atol):
    """(failures, max |served - Keras|) for the predict on real image bytes."""
    served, failures = _served(predict, "probabilities")
    if failures:
        return failures, None
    if not np.isfinite(served).all():  # NaN passes any "diff > atol" test
        bad = int((~np.isfinite(served)).any(axis=tuple(range(1, served.ndim))).sum())
        return [f"served probabilities are not finite (NaN or inf) on {bad} of "
                f"{len(served)} images"], None
    if keras_probs is None:
        return [], None
    if served.shape != keras_probs.shape:
        return [f"served probabilities have shape {served.shape}, Keras model "
                f"{keras_probs.shape}"], None
    failures = []
    max_diff = float(np.abs(served - keras_probs).max())
    if not max_diff <= atol:  # NaN or inf from the Keras model fail too
        failures.append(f"served and Keras probabilities differ by {max_diff:.3g} (> {atol})")
    top2 = np.sort(keras_probs, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > atol if top2.shape[1] == 2 else True
    flipped = (served.argmax(-1) != keras_probs.argmax(-1)) & clear
    if flipped.any():
        failures.append(f"served top-1 class differs from the Keras model's on "
                        f"{int(flipped.sum())} of {len(served)} images")
    return failures, max_diff


def _source_failures(info, model):
    recorded = info.get("source", {}).get("weights_sha256")
    if model is None or recorded is None or recorded == model_fingerprint(model):
        return []
    return ["the model given is not the one this version was exported from (its weights "
            "differ from the recorded fingerprint)"]


def verify_export(version_dir: str, model=None, image_files=None, atol: Optional[float] = None,
                  timeout: int = 600) -> dict:
    """Returns ``{"ok": bool, "failures": [...], "max_abs_diff": float|None, ...}``.

    The served probabilities must be within ``atol`` of the Keras model's (default by the
    export's precision, :data:`TOLERANCES`) and give the same top-1 class wherever the
    model's own top-1 margin is wider than ``atol``; the model must be the one the version
    was exported from (its weights fingerprint is recorded in the export). An embedding
    export (a headless tower's) must serve embeddings within ``atol`` times the largest
    |value| of the Keras model's.
    """
    version_dir = os.path.abspath(version_dir)  # the check runs in another directory
    if not os.path.exists(os.path.join(version_dir, "saved_model.pb")):
        return {"ok": False, "failures": [f"no saved_model.pb in {version_dir}"]}
    info = read_export_info(version_dir)
    if atol is None:
        atol = TOLERANCES.get(info.get("precision"), TOLERANCES["float32"])
    progress = Progress(1 if model is None else 2, unit="stage")  # shown on a terminal
    with tempfile.TemporaryDirectory() as tmp:
        image_files = list(image_files or sample_image_files(tmp, info.get("max_pixels"))
                           [:info.get("max_batch")])
        report = _run_session_check(version_dir, image_files, tmp, timeout)
        progress.advance()
        if isinstance(report, str):
            return {"ok": False, "failures": [report]}
        kind, want = info.get("outputs", "classes"), None
        if model is not None:
            outputs = keras_probabilities if kind == "classes" else keras_outputs
            want = outputs(model, [open(f, "rb").read() for f in image_files])
            progress.advance()
    width = model.output_shape[-1] if model is not None else None
    agreement, max_diff = (_agreement_failures if kind == "classes" else _embedding_failures)(
        report["predict"], want, atol)
    failures = (_source_failures(info, model)
                + _signature_failures(report["signatures"], width, kind)
                + _graph_failures(report) + agreement)
    return {"ok": not failures, "failures": failures, "max_abs_diff": max_diff, "outputs": kind,
            "precision": info.get("precision"), "frozen": info.get("frozen"), "atol": atol,
            "signatures": report["signatures"], "warmup_records": report["warmup"]["records"],
            "predict": report["predict"]}


def format_report(version_dir: str, report: dict) -> str:
    lines = [f"verify {version_dir}: {'OK' if report['ok'] else 'FAILED'}"]
    if report.get("precision"):
        lines.append(f"  precision {report['precision']}, "
                     f"{'frozen (weights as constants)' if report.get('frozen') else 'variables'}")
    for name, sig in sorted(report.get("signatures", {}).items()):
        ins = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in sorted(sig["inputs"].items()))
        outs = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in sorted(sig["outputs"].items()))
        lines.append(f"  {name}: ({ins}) -> ({outs})")
    if "warmup_records" in report:
        lines.append(f"  warm-up records replayed: {report['warmup_records']}")
    if report.get("max_abs_diff") is not None:
        what = ("embedding, over its largest |value|" if report.get("outputs") == "embedding"
                else "probability")
        lines.append(f"  max |served - Keras| {what}: {report['max_abs_diff']:.3g} "
                     f"(tolerance {report['atol']:.3g})")
    lines += [f"  FAIL: {f}" for f in report["failures"]]
    return "\n".join(lines)
