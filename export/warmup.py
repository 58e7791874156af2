"""``assets.extra/tf_serving_warmup_requests``: one PredictionLog per signature."""
from __future__ import annotations

import os

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


def write_warmup(version_dir: str, model_name: str) -> str:
    """Writes the warm-up records (needs the protos of ``tensorflow-serving-api``)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    from export.signatures import BYTES_INPUT, IMAGES_INPUT

    requests = [
        ("serving_default", BYTES_INPUT,
         tf.make_tensor_proto([sample_jpeg(), sample_jpeg(48, 80, 1)], dtype=tf.string)),
        ("serving_images", IMAGES_INPUT,
         tf.make_tensor_proto(sample_image(40, 56, 2)[None].astype(np.float32))),
    ]
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
