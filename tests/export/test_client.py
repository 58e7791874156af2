"""The REST client against servers that answer badly: slowly, with nonsense, too much."""
import json
import threading
import time
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
