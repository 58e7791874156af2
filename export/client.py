"""Clients for a served model: TF Serving REST and gRPC, and a local SavedModel."""
from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from typing import List, Sequence


class ServingError(RuntimeError):
    """The server could not be reached or answered with an error."""


def _rows(outputs: dict) -> List[dict]:
    """Column-format outputs -> one dict per image (classes, scores, labels)."""
    rows = []
    for i in range(len(outputs["classes"])):
        row = {"classes": [int(c) for c in outputs["classes"][i]],
               "scores": [float(s) for s in outputs["scores"][i]]}
        if "labels" in outputs:
            row["labels"] = [lab.decode() if isinstance(lab, bytes) else str(lab)
                             for lab in outputs["labels"][i]]
        rows.append(row)
    return rows


def predict_rest(url: str, images: Sequence[bytes], model: str = "vit",
                 signature: str = "serving_default", timeout: float = 30.0) -> List[dict]:
    """POST ``{"instances": [{"b64": ...}]}`` to ``URL/v1/models/MODEL:predict``.

    ``url`` is the server's REST address (``http://localhost:8501``) or a full ``:predict``
    URL.
    """
    endpoint = url if url.endswith(":predict") else \
        f"{url.rstrip('/')}/v1/models/{model}:predict"
    body = json.dumps({"signature_name": signature,
                       "instances": [{"b64": base64.b64encode(b).decode()} for b in images]})
    request = urllib.request.Request(endpoint, data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except ValueError:
            pass
        raise ServingError(f"server error {error.code} from {endpoint}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:
        raise ServingError(f"cannot reach {endpoint}: {getattr(error, 'reason', error)}") \
            from None
    predictions = payload.get("predictions")
    if predictions is None:
        raise ServingError(f"unexpected answer from {endpoint}: {str(payload)[:200]}")
    columns = {k: [p[k] for p in predictions] for k in predictions[0]}
    return _rows(columns)


def predict_grpc(address: str, images: Sequence[bytes], model: str = "vit",
                 signature: str = "serving_default", timeout: float = 30.0) -> List[dict]:
    """``PredictionService.Predict`` at ``host:port`` (TF Serving's gRPC port, 8500)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ServingError(f"gRPC {error.code().name} from {address}: {error.details()}") \
                from None
    return _rows({k: tf.make_ndarray(v) for k, v in response.outputs.items()})


def predict_saved_model(version_dir: str, images: Sequence[bytes]) -> List[dict]:
    """Runs the export's ``serving_default`` locally (no server)."""
    import tensorflow as tf
    loaded = tf.saved_model.load(version_dir)
    outputs = loaded.signatures["serving_default"](image_bytes=tf.constant(list(images)))
    return _rows({k: v.numpy() for k, v in outputs.items()})
