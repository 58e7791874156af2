"""The REST client against servers that answer badly: slowly, with nonsense, too much."""
import json
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from export import client


def _server(respond):
    """A local HTTP server whose handler calls ``respond(handler)``."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            try:
                respond(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def _answer(status, body, content_type="application/json"):
    def respond(handler):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return respond


def test_a_dripping_server_is_cut_off_at_the_deadline():
    def drip(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        for _ in range(100):  # one byte every 0.2 s: 20 s in all
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    server, url = _server(drip)
    try:
        start = time.monotonic()
        with pytest.raises(client.ServingError, match="no complete answer from .* within"):
            client.predict_rest(url, [b"x"], model="m", timeout=1.5)
        assert time.monotonic() - start < 3
    finally:
        server.shutdown()
        server.server_close()


ROW = {"classes": [1, 0], "scores": [0.9, 0.1]}


@pytest.mark.parametrize("status,body,match", [
    (200, [], "unexpected answer from .*: \\[\\]"),
    (200, {"predictions": [{"scores": [0.5]}] * 2}, "no 'classes' and 'scores'"),
    (200, b"<html><body>Bad gateway</body></html>", "unexpected answer .*<html><body>Bad"),
    (200, {"predictions": [ROW]}, "1 predictions for 2 images"),
    (200, {"predictions": [ROW, {"classes": [1, 0], "scores": ["a", "b"]}]},
     "unexpected answer .*could not convert string to float"),
    (200, {"predictions": [ROW, {"classes": [1], "scores": [0.9, 0.1]}]},
     "row 1 has classes, scores and labels of different lengths"),
    (200, b"[" * 100_000, "unexpected answer from .*: JSON nested too deeply"),
    (200, b'{"predictions": [{"classes": [1e999], "scores": [0.5]}, {"classes": [1], '
          b'"scores": [0.5]}]}', "row 0: class id inf is not an integer"),
    (200, {"predictions": [ROW, {"classes": [-7, 0], "scores": [0.9, 0.1]}]},
     "row 1: class id -7 is negative"),
    (200, {"predictions": [ROW, {"classes": [1.5, 0], "scores": [0.9, 0.1]}]},
     "row 1: class id 1.5 is not an integer"),
    (200, {"predictions": [{**ROW, "probabilities": [0.1, 0.9]},
                           {"classes": [2, 0], "scores": [0.9, 0.1],
                            "probabilities": [0.1, 0.9]}]},
     "row 1: class id 2 is outside the model's 2 classes"),
    (200, b'{"predictions": [{"classes": [1, 0], "scores": [NaN, 0.1]}, {"classes": [1, 0], '
          b'"scores": [0.9, 0.1]}]}', "row 0: score nan is not a probability in \\[0, 1\\]"),
    (200, {"predictions": [ROW, {"classes": [1, 0], "scores": [17.5, 0.1]}]},
     "row 1: score 17.5 is not a probability"),
    (200, {"predictions": [ROW, {"classes": [1, 0], "scores": [0.9, -0.1]}]},
     "row 1: score -0.1 is not a probability"),
    (200, {"predictions": [{**ROW, "labels": ["a", "b"]}, {**ROW, "labels": ["a", [[1]]]}]},
     "row 1: label \\[\\[1\\]\\] is not a string"),
    (500, [1, 2], "server error 500 from .*: \\[1, 2\\]"),
    (503, b"<html>down</html>", "server error 503 from .*: <html>down</html>"),
    (400, {"error": "Input to reshape\nis a tensor"}, "server error 400 .*: Input to reshape is"),
])
def test_malformed_answers_are_one_line_errors(status, body, match):
    server, url = _server(_answer(status, body))
    try:
        with pytest.raises(client.ServingError, match=match) as error:
            client.predict_rest(url, [b"x", b"y"], model="m", timeout=5)
        assert "\n" not in str(error.value)
    finally:
        server.shutdown()
        server.server_close()


def test_an_oversized_answer_is_refused():
    server, url = _server(_answer(200, {"predictions": [ROW, ROW], "pad": "x" * 5000}))
    try:
        with pytest.raises(client.ServingError, match="is over 1000 bytes"):
            client.predict_rest(url, [b"x", b"y"], model="m", max_response_bytes=1000)
        rows = client.predict_rest(url, [b"x", b"y"], model="m")
        assert rows == [{"classes": [1, 0], "scores": [0.9, 0.1]}] * 2
    finally:
        server.shutdown()
        server.server_close()


def _trickle_headers(handler):
    handler.wfile.write(b"HTTP/1.1 200 OK\r\n")
    for i in range(12):  # one header line every 0.5 s: 6 s in all, bounded
        handler.wfile.write(b"X-Slow-%d: 1\r\n" % i)
        handler.wfile.flush()
        time.sleep(0.5)
    handler.wfile.write(b"Content-Length: 2\r\n\r\n{}")


def _trickle_chunk_size(handler):
    handler.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(12):  # the chunk-size line, one digit every 0.5 s: 6 s in all, bounded
        handler.wfile.write(b"0")
        handler.wfile.flush()
        time.sleep(0.5)
    handler.wfile.write(b"2\r\n{}\r\n0\r\n\r\n")


@pytest.mark.parametrize("respond", [_trickle_headers, _trickle_chunk_size])
def test_the_deadline_bounds_headers_and_chunk_sizes(respond):
    """The deadline bounds the whole call: a server trickling its headers or a chunk-size
    line (each read within a per-read timeout) is cut off at the deadline."""
    server, url = _server(respond)
    try:
        start = time.monotonic()
        with pytest.raises(client.ServingError, match="no complete answer from .* within"):
            client.predict_rest(url, [b"x"], model="m", timeout=1.5)
        elapsed = time.monotonic() - start
        assert elapsed < 1.5 + 1.0, f"the call took {elapsed:.1f} s"
    finally:
        server.shutdown()
        server.server_close()


def _grpc_server(outputs):
    """A local PredictionService that answers every call with ``outputs`` ({key:
    TensorProto})."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            response = predict_pb2.PredictResponse()
            for key, proto in outputs.items():
                response.outputs[key].CopyFrom(proto)
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def _proto(values, dtype, shape=None):
    import tensorflow as tf
    return tf.make_tensor_proto(values, dtype=dtype, shape=shape)


def _good_grpc_outputs():
    import tensorflow as tf
    return {"classes": _proto([[1, 0]], tf.int32), "scores": _proto([[0.9, 0.1]], tf.float32),
            "probabilities": _proto([[0.1, 0.9, 0.0]], tf.float32)}


def test_a_grpc_answer_declaring_a_huge_shape_is_refused_before_decoding():
    """One float_val declaring [1, 5,000,000] (tf.make_ndarray would pad it out to 20 MB,
    then a list of 5 million floats): refused from the declared shape, nothing decoded."""
    import tensorflow as tf
    bomb = tf.make_tensor_proto(0.5, dtype=tf.float32)
    bomb.tensor_shape.Clear()
    for size in (1, 5_000_000):
        bomb.tensor_shape.dim.add(size=size)
    server, address = _grpc_server({**_good_grpc_outputs(), "scores": bomb})
    try:
        tracemalloc.start()
        with pytest.raises(client.ServingError, match=r"'scores' declares shape \[1, 5000000\] "
                                                      r"\(5000000 values\) but holds 1"):
            client.predict_grpc(address, [b"x"], model="m", timeout=10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        server.stop(0)
    assert peak < 5 * 2 ** 20, f"{peak / 2 ** 20:.0f} MB allocated"


@pytest.mark.parametrize("change,match", [
    ({"classes": ("scalar", 3), "scores": ("scalar", 0.5)},
     r"'classes' has shape \[\], expected \[1, n\] for 1 images"),
    ({"classes": [[1, 0], [0, 1]]}, r"'classes' has shape \[2, 2\], expected \[1, n\]"),
    ({"classes": [[7, 0]]}, "row 0: class id 7 is outside the model's 3 classes"),
    ({"classes": [[-7, 0]]}, "row 0: class id -7 is negative"),
    ({"scores": [[float("nan"), 0.1]]}, r"row 0: score nan is not a probability in \[0, 1\]"),
    ({"scores": [[17.5, 0.1]]}, "row 0: score 17.5 is not a probability"),
    ({"scores": [[0.9, 0.1, 0.0]]}, "top-k outputs of shapes .* do not fit together"),
    ({"classes": ("float", [[1.0, 0.0]])}, "'classes' is of type float32"),
])
def test_grpc_nonsense_is_a_serving_error(change, match):
    import tensorflow as tf
    outputs = _good_grpc_outputs()
    for key, value in change.items():
        dtype = tf.float32 if key == "scores" else tf.int32
        if isinstance(value, tuple):
            dtype = tf.float32 if value[0] == "float" or key == "scores" else tf.int32
            value = value[1]
        outputs[key] = _proto(value, dtype)
    server, address = _grpc_server(outputs)
    try:
        with pytest.raises(client.ServingError, match=match) as error:
            client.predict_grpc(address, [b"x"], model="m", timeout=10)
        assert "\n" not in str(error.value)
    finally:
        server.stop(0)


def test_a_good_grpc_answer_passes():
    server, address = _grpc_server(_good_grpc_outputs())
    try:
        rows = client.predict_grpc(address, [b"x"], model="m", timeout=10)
    finally:
        server.stop(0)
    assert rows == [{"classes": [1, 0], "scores": [pytest.approx(0.9), pytest.approx(0.1)]}]
