"""``assets.extra/tf_serving_warmup_requests``: one PredictionLog per signature."""
from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def sample_image(height=64, width=64, seed=0) -> np.ndarray:
    """A deterministic, non-constant uint8 RGB image (gradients plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 / max(width - 1, 1), y * 255 / max(height - 1, 1),
                      rng.uniform(0, 255, (height, width))], axis=-1)
    return image.astype(np.uint8)


def sample_jpeg(height=64, width=64, seed=0) -> bytes:
    return tf.io.encode_jpeg(sample_image(height, width, seed)).numpy()


def fit_size(height: int, width: int, max_pixels: Optional[int]):
    """(height, width) shrunk, keeping the aspect, to at most ``max_pixels`` pixels."""
    if max_pixels is None or height * width <= max_pixels:
        return height, width
    scale = math.sqrt(max_pixels / (height * width))
    return max(1, int(height * scale)), max(1, int(width * scale))


def write_warmup(version_dir: str, model_name: str, max_pixels: Optional[int] = None,
                 max_batch: Optional[int] = None) -> str:
    """Writes the warm-up records (needs the protos of ``tensorflow-serving-api``).

    The sample images fit ``max_pixels`` and ``max_batch``: a failing record would fail the
    version's load.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from export.signatures import SIGNATURES

    jpegs = [sample_jpeg(*fit_size(64, 64, max_pixels)),
             sample_jpeg(*fit_size(48, 80, max_pixels), seed=1)][:max_batch]
    examples = {"string": tf.make_tensor_proto(jpegs, dtype=tf.string),
                "float32": tf.make_tensor_proto(sample_image(40, 56, 2)[None].astype(np.float32))}
    requests = [(sig.name, sig.input_key, examples[sig.dtype]) for sig in SIGNATURES]
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature, key, tensor in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
            request.inputs[key].CopyFrom(tensor)
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path
