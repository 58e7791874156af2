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

from export.warmup import sample_image

SESSION_CHECK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "session_check.py")
PREDICT_METHOD = "tensorflow/serving/predict"


def _expected_signatures(num_classes: Optional[int]):
    k = None  # top-k width is the export's choice
    outputs = {"probabilities": ("float32", [-1, num_classes or None]),
               "scores": ("float32", [-1, k]), "classes": ("int32", [-1, k])}
    return {
        "serving_default": ({"image_bytes": ("string", [-1])}, outputs),
        "serving_images": ({"images": ("float32", [-1, -1, -1, 3])}, outputs),
    }


def _shape_ok(found, expected):
    if found is None or len(found) != len(expected):
        return False
    return all(e is None or f == e for f, e in zip(found, expected))


def sample_image_files(directory: str):
    """A JPEG and a PNG of different sizes, written for the checks."""
    import tensorflow as tf
    files = []
    for i, (h, w, encode, ext) in enumerate([(64, 64, tf.io.encode_jpeg, "jpg"),
                                             (50, 90, tf.io.encode_png, "png")]):
        path = os.path.join(directory, f"sample{i}.{ext}")
        with open(path, "wb") as f:
            f.write(encode(sample_image(h, w, seed=10 + i)).numpy())
        files.append(path)
    return files


# Largest |served - Keras| probability accepted, by the export's precision.
TOLERANCES = {"float32": 1e-4, "bfloat16": 2e-2}


def verify_export(version_dir: str, model=None, image_files=None, atol: Optional[float] = None,
                  timeout: int = 600) -> dict:
    """Returns ``{"ok": bool, "failures": [...], "max_abs_diff": float|None, ...}``.

    The served probabilities must be within ``atol`` of the Keras model's (default by the
    export's precision, :data:`TOLERANCES`) and give the same top-1 class wherever the
    model's own top-1 margin is wider than ``atol``.
    """
    from export.saved_model import read_export_info
    failures = []
    version_dir = os.path.abspath(version_dir)  # the check runs in another directory
    if not os.path.exists(os.path.join(version_dir, "saved_model.pb")):
        return {"ok": False, "failures": [f"no saved_model.pb in {version_dir}"]}
    info = read_export_info(version_dir)
    if atol is None:
        atol = TOLERANCES.get(info.get("precision"), TOLERANCES["float32"])
    with tempfile.TemporaryDirectory() as tmp:
        image_files = list(image_files or sample_image_files(tmp))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)  # nothing of this project on the path
        result = subprocess.run([sys.executable, SESSION_CHECK, version_dir, *image_files],
                                capture_output=True, text=True, timeout=timeout, env=env,
                                cwd=tmp)
        if result.returncode != 0:
            tail = result.stderr.strip().splitlines()[-3:]
            return {"ok": False, "failures": ["the session loader failed: " + " | ".join(tail)]}
        report = json.loads(result.stdout.strip().splitlines()[-1])
        keras_probs = None
        if model is not None:
            from export.saved_model import keras_probabilities
            keras_probs = keras_probabilities(model, [open(f, "rb").read() for f in image_files])

    num_classes = model.output_shape[-1] if model is not None else None
    for name, (inputs, outputs) in _expected_signatures(num_classes).items():
        sig = report["signatures"].get(name)
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
        if "labels" in sig["outputs"] and sig["outputs"]["labels"]["dtype"] != "string":
            failures.append(f"{name}: output 'labels' must be a string tensor")
    if report["unregistered_ops"]:
        failures.append(f"ops not in the stock registry: {report['unregistered_ops']}")
    if report["forbidden_ops"]:
        failures.append(f"py_function ops cannot run in TF Serving: {report['forbidden_ops']}")
    if report["xla_functions"]:
        failures.append(f"functions marked jit_compile (TF Serving runs without XLA): "
                        f"{report['xla_functions'][:3]}")
    warm = report["warmup"]
    if warm["records"] == 0:
        failures.append("no warm-up records (assets.extra/tf_serving_warmup_requests)")
    failures += [f"warm-up {e}" for e in warm["errors"]]
    if report["loaded_modules"]:
        failures.append(f"the check imported {report['loaded_modules']}")
    max_diff = None
    predict = report["predict"]
    if predict is None:
        failures.append("no predict was run (serving_default missing)")
    elif "error" in predict:
        failures.append(f"predict on real image bytes failed: {predict['error']}")
    elif keras_probs is not None:
        served = np.asarray(predict["probabilities"], np.float32)
        if served.shape != keras_probs.shape:
            failures.append(f"served probabilities have shape {served.shape}, Keras model "
                            f"{keras_probs.shape}")
        else:
            max_diff = float(np.abs(served - keras_probs).max())
            if max_diff > atol:
                failures.append(f"served and Keras probabilities differ by {max_diff:.3g} "
                                f"(> {atol})")
            top2 = np.sort(keras_probs, axis=-1)[:, -2:]
            clear = (top2[:, 1] - top2[:, 0]) > atol if top2.shape[1] == 2 else True
            flipped = (served.argmax(-1) != keras_probs.argmax(-1)) & clear
            if flipped.any():
                failures.append(f"served top-1 class differs from the Keras model's on "
                                f"{int(flipped.sum())} of {len(served)} images")
    return {"ok": not failures, "failures": failures, "max_abs_diff": max_diff,
            "precision": info.get("precision"), "frozen": info.get("frozen"), "atol": atol,
            "signatures": report["signatures"], "warmup_records": warm["records"],
            "predict": predict}


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
        lines.append(f"  max |served - Keras| probability: {report['max_abs_diff']:.3g} "
                     f"(tolerance {report['atol']:.3g})")
    lines += [f"  FAIL: {f}" for f in report["failures"]]
    return "\n".join(lines)
