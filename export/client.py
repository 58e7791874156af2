"""Clients for a served model: TF Serving REST and gRPC, and a local SavedModel.

A server is not trusted to answer well: every call has a total deadline (not a per-read
timeout), a bound on the answer's size, and the answer's shape is checked (one row of
classes and scores per image) before anything is returned; anything else is a one-line
:class:`ServingError`.
"""
from __future__ import annotations

import base64
import functools
import http.client
import io
import json
import time
import urllib.parse
from typing import List, Sequence

from export.signatures import DEFAULT_MAX_BATCH, DEFAULT_SIGNATURE, find_signature

DEFAULT_TIMEOUT = 30.0  # seconds for the whole call
MAX_RESPONSE_BYTES = 64 * 2 ** 20


class ServingError(RuntimeError):
    """The server could not be reached, answered with an error, or answered nonsense."""


def _one_line(text, limit=200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _rows(outputs, count: int, source: str) -> List[dict]:
    """Column-format outputs -> one dict per image (classes, scores, labels), checked."""
    if not isinstance(outputs, dict) or "classes" not in outputs or "scores" not in outputs:
        raise ServingError(f"unexpected answer from {source}: no 'classes' and 'scores' "
                           f"({_one_line(outputs)})")
    columns = {k: outputs[k] for k in ("classes", "scores", "labels") if k in outputs}
    for key, column in columns.items():
        if len(column) != count:
            raise ServingError(f"unexpected answer from {source}: {len(column)} rows of "
                               f"{key!r} for {count} images")
    rows = []
    try:
        for i in range(count):
            row = {"classes": [int(c) for c in columns["classes"][i]],
                   "scores": [float(s) for s in columns["scores"][i]]}
            if "labels" in columns:
                row["labels"] = [lab.decode() if isinstance(lab, bytes) else str(lab)
                                 for lab in columns["labels"][i]]
            if len({len(v) for v in row.values()}) != 1:
                raise ValueError(f"row {i} has classes, scores and labels of different lengths")
            rows.append(row)
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError) as error:
        raise ServingError(f"unexpected answer from {source}: {_one_line(error)}") from None
    return rows


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each receive bounded by what is left of the call's deadline: a
    server trickling its status line, headers, chunk sizes or body one byte at a time
    cannot stretch the call past it (a per-read timeout would restart at every byte)."""

    def __init__(self, sock, deadline: float):
        super().__init__()
        # The socket's own raw reader keeps it open while the response reads (as
        # http.client's makefile does when the connection closes its end early).
        self.sock, self.raw, self.deadline = sock, sock.makefile("rb", buffering=0), deadline

    def readable(self):
        return True

    def readinto(self, buffer):
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the call's deadline passed")
        self.sock.settimeout(remaining)
        return self.raw.readinto(buffer)

    def close(self):
        self.raw.close()
        super().close()


class _DeadlineSocket:
    """What ``http.client.HTTPResponse`` reads a response through (it only calls
    ``makefile("rb")``)."""

    def __init__(self, sock, deadline: float):
        self.sock, self.deadline = sock, deadline

    def makefile(self, mode, *args, **kwargs):
        return io.BufferedReader(_DeadlineReader(self.sock, self.deadline))


def _deadline_read(response, deadline: float, max_bytes: int, source: str) -> bytes:
    """The response body, read against the call's ``deadline`` (time.monotonic())."""
    chunks, size = [], 0
    while True:
        if deadline - time.monotonic() <= 0:
            raise ServingError(f"no complete answer from {source} within the deadline")
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ServingError(f"answer from {source} is over {max_bytes} bytes")
        chunks.append(chunk)


class _DeadlineResponse(http.client.HTTPResponse):
    def __init__(self, sock, *args, deadline_socket, **kwargs):
        super().__init__(deadline_socket, *args, **kwargs)


def _post(url: str, body: bytes, timeout: float, max_bytes: int):
    """(status, body bytes) of a JSON POST, all of it within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServingError(f"not an http(s) URL: {url}")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.connect()
        connection.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        connection.request("POST", parts.path + (f"?{parts.query}" if parts.query else ""),
                           body=body, headers={"Content-Type": "application/json"})
        # The status line, headers and body are all read through the deadline-bound reader.
        connection.response_class = functools.partial(
            _DeadlineResponse, deadline_socket=_DeadlineSocket(connection.sock, deadline))
        with connection.getresponse() as response:
            return response.status, _deadline_read(response, deadline, max_bytes, url)
    except TimeoutError:
        raise ServingError(f"no complete answer from {url} within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as error:
        raise ServingError(f"cannot reach {url}: {_one_line(error) or type(error).__name__}") \
            from None
    finally:
        connection.close()


def _error_detail(payload) -> str:
    if isinstance(payload, dict) and "error" in payload:
        return _one_line(payload["error"])
    return _one_line(payload)


def predict_rest(url: str, images: Sequence[bytes], model: str = "vit",
                 signature: str = DEFAULT_SIGNATURE.name,
                 timeout: float = DEFAULT_TIMEOUT,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> List[dict]:
    """POST ``{"instances": [{"b64": ...}]}`` to ``URL/v1/models/MODEL:predict``.

    ``url`` is the server's REST address (``http://localhost:8501``) or a full ``:predict``
    URL. ``timeout`` bounds the whole call; an answer over ``max_response_bytes`` is refused.
    """
    if not find_signature(signature).encoded:
        raise ValueError(f"predict_rest sends image bytes; {signature!r} takes pixels")
    endpoint = url if url.endswith(":predict") else \
        f"{url.rstrip('/')}/v1/models/{model}:predict"
    body = json.dumps({"signature_name": signature,
                       "instances": [{"b64": base64.b64encode(b).decode()} for b in images]})
    status, data = _post(endpoint, body.encode(), timeout, max_response_bytes)
    try:
        payload = json.loads(data)
    except ValueError:
        payload = None
    if status != 200:
        detail = _error_detail(payload if payload is not None
                               else data.decode(errors="replace"))
        raise ServingError(f"server error {status} from {endpoint}: {detail}")
    if not isinstance(payload, dict) or not isinstance(payload.get("predictions"), list):
        raise ServingError(f"unexpected answer from {endpoint}: "
                           f"{_one_line(data.decode(errors='replace'))}")
    predictions = payload["predictions"]
    if len(predictions) != len(images) or not all(isinstance(p, dict) for p in predictions):
        raise ServingError(f"unexpected answer from {endpoint}: {len(predictions)} predictions "
                           f"for {len(images)} images")
    columns = {k: [p.get(k) for p in predictions] for k in ("classes", "scores", "labels")
               if all(k in p for p in predictions)}
    return _rows(columns, len(images), endpoint)


def predict_grpc(address: str, images: Sequence[bytes], model: str = "vit",
                 signature: str = DEFAULT_SIGNATURE.name,
                 timeout: float = DEFAULT_TIMEOUT,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> List[dict]:
    """``PredictionService.Predict`` at ``host:port`` (TF Serving's gRPC port, 8500);
    ``timeout`` is the call's deadline."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    sig = find_signature(signature)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = sig.name
    request.inputs[sig.input_key].CopyFrom(tf.make_tensor_proto(list(images), dtype=tf.string))
    options = [("grpc.max_receive_message_length", max_response_bytes)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ServingError(f"gRPC {error.code().name} from {address}: "
                               f"{_one_line(error.details())}") from None
    try:
        outputs = {k: tf.make_ndarray(v) for k, v in response.outputs.items()}
    except Exception as error:  # a malformed TensorProto
        raise ServingError(f"unexpected answer from {address}: {_one_line(error)}") from None
    return _rows(outputs, len(images), address)


def predict_saved_model(version_dir: str, images: Sequence[bytes]) -> List[dict]:
    """Runs the export's ``serving_default`` locally (no server), in requests of at most
    the export's ``max_batch`` images."""
    import tensorflow as tf

    from export.saved_model import read_export_info
    batch = read_export_info(version_dir).get("max_batch", DEFAULT_MAX_BATCH)
    serve = tf.saved_model.load(version_dir).signatures[DEFAULT_SIGNATURE.name]
    rows = []
    for start in range(0, len(images), batch):
        chunk = list(images[start:start + batch])
        outputs = serve(**{DEFAULT_SIGNATURE.input_key: tf.constant(chunk, tf.string)})
        rows += _rows({k: v.numpy() for k, v in outputs.items()}, len(chunk), version_dir)
    return rows
