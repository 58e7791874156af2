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
import math
import numbers
import reprlib
import time
import urllib.parse
from typing import List, Optional, Sequence

from export.signatures import DEFAULT_MAX_BATCH, DEFAULT_SIGNATURE, find_signature

DEFAULT_TIMEOUT = 30.0  # seconds for the whole call
MAX_RESPONSE_BYTES = 64 * 2 ** 20


class ServingError(RuntimeError):
    """The server could not be reached, answered with an error, or answered nonsense."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring = 4, 8, 8, 80


def _one_line(text, limit=200) -> str:
    # A server's nested lists and dicts are shown shortened (and never recursed deeply).
    text = _REPR.repr(text) if isinstance(text, (list, dict, tuple)) else str(text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _class_id(value, row: int, num_classes: Optional[int]) -> int:
    """A class id from an answer: an integer (or an integral float, as JSON may give it)
    within the model's classes."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        class_id = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        class_id = int(value)
    else:
        raise ValueError(f"row {row}: class id {_one_line(value, 40)} is not an integer")
    if class_id < 0:
        raise ValueError(f"row {row}: class id {class_id} is negative")
    if num_classes is not None and class_id >= num_classes:
        raise ValueError(f"row {row}: class id {class_id} is outside the model's "
                         f"{num_classes} classes")
    return class_id


def _score(value, row: int) -> float:
    score = float(value)
    if not 0.0 <= score <= 1.0:  # NaN fails too
        raise ValueError(f"row {row}: score {score!r} is not a probability in [0, 1]")
    return score


def _label(value, row: int) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise ValueError(f"row {row}: label {_one_line(value, 40)} is not a string")
    return value


def _one_row(columns, i: int, num_classes: Optional[int]) -> dict:
    row = {"classes": [_class_id(c, i, num_classes) for c in columns["classes"][i]],
           "scores": [_score(v, i) for v in columns["scores"][i]]}
    if "labels" in columns:
        row["labels"] = [_label(lab, i) for lab in columns["labels"][i]]
    if len({len(v) for v in row.values()}) != 1:
        raise ValueError(f"row {i} has classes, scores and labels of different lengths")
    return row


def _rows(outputs, count: int, source: str, num_classes: Optional[int] = None) -> List[dict]:
    """Column-format outputs -> one dict per image (classes, scores, labels), checked: one
    row per image, integer class ids within ``num_classes`` (when known), scores in [0, 1]."""
    if not isinstance(outputs, dict) or "classes" not in outputs or "scores" not in outputs:
        raise ServingError(f"unexpected answer from {source}: no 'classes' and 'scores' "
                           f"({_one_line(outputs)})")
    columns = {k: outputs[k] for k in ("classes", "scores", "labels") if k in outputs}
    for key, column in columns.items():
        if isinstance(column, (str, bytes, dict)) or not hasattr(column, "__len__") \
                or getattr(column, "ndim", 1) == 0:
            raise ServingError(f"unexpected answer from {source}: {key!r} is not one row "
                               f"per image ({_one_line(column)})")
        if len(column) != count:
            raise ServingError(f"unexpected answer from {source}: {len(column)} rows of "
                               f"{key!r} for {count} images")
    try:
        return [_one_row(columns, i, num_classes) for i in range(count)]
    except (TypeError, ValueError, AttributeError, UnicodeDecodeError, OverflowError) as error:
        raise ServingError(f"unexpected answer from {source}: {_one_line(error)}") from None


def _embedding_rows(values, count: int, source: str) -> List[dict]:
    """A headless tower's answer (its ``embedding`` output, one row per image) -> one dict
    ``{"embedding": [floats]}`` per image, checked: one row per image, every row a list of
    finite numbers, all of one width."""
    def bad(what):
        return ServingError(f"unexpected answer from {source}: {what}")
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__") \
            or getattr(values, "ndim", 1) == 0:
        raise bad(f"'embedding' is not one row per image ({_one_line(values)})")
    if len(values) != count:
        raise bad(f"{len(values)} rows of 'embedding' for {count} images")
    rows = []
    for i, row in enumerate(values):
        if not (isinstance(row, (list, tuple)) or getattr(row, "ndim", None) == 1) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in row):
            raise bad(f"row {i}: embedding {_one_line(row, 60)} is not a list of numbers")
        floats = [float(v) for v in row]
        if not all(math.isfinite(v) for v in floats):
            raise bad(f"row {i}: embedding has non-finite values (NaN or inf)")
        rows.append({"embedding": floats})
    if len({len(row["embedding"]) for row in rows}) > 1:
        raise bad("embeddings of different widths")
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
    except RecursionError:
        raise ServingError(f"unexpected answer from {endpoint}: JSON nested too deeply "
                           f"({_one_line(data[:100].decode(errors='replace'))})") from None
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
    if predictions and all(set(p) == {"embedding"} for p in predictions):  # a headless tower
        return _embedding_rows([p["embedding"] for p in predictions], len(images), endpoint)
    columns = {k: [p.get(k) for p in predictions] for k in ("classes", "scores", "labels")
               if all(k in p for p in predictions)}
    return _rows(columns, len(images), endpoint, _rest_class_count(predictions, endpoint))


def _rest_class_count(predictions, source) -> Optional[int]:
    """The model's class count K, from the length of each row's ``probabilities``."""
    rows = [p.get("probabilities") for p in predictions]
    if not rows or not all(isinstance(row, list) for row in rows):
        return None
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise ServingError(f"unexpected answer from {source}: rows of 'probabilities' of "
                           f"different lengths {sorted(lengths)[:5]}")
    return lengths.pop()


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
    if set(response.outputs) == {"embedding"}:  # a headless tower
        _declared(response.outputs["embedding"], "embedding", len(images), address)
        return _embedding_rows(_make_ndarray(response.outputs["embedding"], address),
                               len(images), address)
    outputs, num_classes = _grpc_outputs(response.outputs, len(images), address)
    return _rows(outputs, len(images), address, num_classes)


def _make_ndarray(proto, source: str):
    import tensorflow as tf
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # a malformed TensorProto
        raise ServingError(f"unexpected answer from {source}: {_one_line(error)}") from None


# What each output of a gRPC answer may be: key -> the TensorProto value fields it may use.
_GRPC_FIELDS = {"classes": ("int_val", "int64_val"), "scores": ("float_val",),
                "labels": ("string_val",), "probabilities": ("float_val",),
                "embedding": ("float_val",)}


def _declared(proto, key: str, count: int, source: str) -> List[int]:
    """The shape a TensorProto declares, checked before anything is decoded: [count, n], as
    many values present as declared (``tf.make_ndarray`` pads a short proto out to its
    declared shape: 60 bytes could declare gigabytes), of a dtype the output may have."""
    import tensorflow as tf
    dims = [d.size for d in proto.tensor_shape.dim]
    if proto.tensor_shape.unknown_rank or len(dims) != 2 or dims[0] != count or dims[1] < 0:
        raise ServingError(f"unexpected answer from {source}: {key!r} has shape {dims}, "
                           f"expected [{count}, n] for {count} images")
    fields = [f for f in _GRPC_FIELDS[key] if getattr(proto, f)]
    try:
        dtype = tf.dtypes.as_dtype(proto.dtype) if proto.dtype else None
    except TypeError:  # not a known DataType
        dtype = None
    allowed = {"int_val": (tf.int32,), "int64_val": (tf.int64,), "float_val": (tf.float32,),
               "string_val": (tf.string,)}
    if dtype not in {d for f in _GRPC_FIELDS[key] for d in allowed[f]}:
        raise ServingError(f"unexpected answer from {source}: {key!r} is of type "
                           f"{dtype.name if dtype else proto.dtype}")
    if proto.tensor_content:
        present = len(proto.tensor_content) // dtype.size if dtype != tf.string else -1
    else:
        present = sum(len(getattr(proto, f)) for f in fields)
    if present != dims[0] * dims[1]:
        raise ServingError(f"unexpected answer from {source}: {key!r} declares shape {dims} "
                           f"({dims[0] * dims[1]} values) but holds {max(present, 0)}")
    return dims


def _grpc_outputs(protos, count: int, source: str):
    """(the outputs used, decoded; the class count K from the declared shape of
    'probabilities', which is not decoded)."""
    import tensorflow as tf
    shapes = {key: _declared(protos[key], key, count, source)
              for key in _GRPC_FIELDS if key in protos}
    if "classes" not in shapes or "scores" not in shapes:
        raise ServingError(f"unexpected answer from {source}: no 'classes' and 'scores' "
                           f"(outputs {sorted(protos)[:10]})")
    widths = {shapes[key][1] for key in ("classes", "scores", "labels") if key in shapes}
    num_classes = shapes["probabilities"][1] if "probabilities" in shapes else None
    if len(widths) != 1 or (num_classes is not None and widths.pop() > num_classes):
        raise ServingError(f"unexpected answer from {source}: top-k outputs of shapes "
                           f"{shapes} do not fit together")
    try:
        return {key: tf.make_ndarray(protos[key]) for key in ("classes", "scores", "labels")
                if key in protos}, num_classes
    except Exception as error:  # a malformed TensorProto
        raise ServingError(f"unexpected answer from {source}: {_one_line(error)}") from None


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
        if "embedding" in outputs:  # a headless tower's export
            rows += _embedding_rows(outputs["embedding"].numpy(), len(chunk), version_dir)
            continue
        rows += _rows({k: v.numpy() for k, v in outputs.items()}, len(chunk), version_dir,
                      outputs["probabilities"].shape[-1])
    return rows
