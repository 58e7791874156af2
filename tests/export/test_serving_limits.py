"""Hostile traffic against the export: decompression bombs, formats not listed, non-finite
pixels, empty batches. Bombs run through the TF1-session loader (what TF Serving uses) in a
fresh process under an address-space limit, which must keep serving afterwards."""
import io
import json
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_vit
from export import export_saved_model
from export.saved_model import keras_probabilities
from export.signatures import DEFAULT_MAX_BATCH
from export.warmup import sample_image
from keras_vit.preprocessing import DEFAULT_MAX_PIXELS
from tests.conftest import REPO, TINY, perturb

# What a bomb may cost the server above its memory after a normal request (the issue's goal).
BOMB_BUDGET_MB = 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)
    base = tmp_path_factory.mktemp("limits")
    return model, export_saved_model(model, str(base / "models"), name="tiny", top_k=3)


def _jpeg(h, w, seed=0):
    return tf.io.encode_jpeg(sample_image(h, w, seed)).numpy()


def webp_bomb(width=16383, height=16383) -> bytes:
    """A lossless WebP of one colour: 34 bytes that declare ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "WEBP", lossless=True)
    data = buffer.getvalue()
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
    return data[:21] + struct.pack("<I", bits | (width - 1) | (height - 1) << 14) + data[25:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width=16000, height=16000) -> bytes:
    """An all-zero 1-bit grayscale PNG (decoded to 3 channels: 3 bytes a pixel)."""
    row = b"\0" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def jpeg_bomb(width=12000, height=12000) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "JPEG", quality=1)
    return buffer.getvalue()


def gif_frames_bomb(width=1000, height=1000, frames=600) -> bytes:
    """A GIF whose every frame is within the limit but which declares ``frames`` of them
    (``tf.io.decode_gif`` decodes all of them)."""
    buffer = io.BytesIO()
    Image.new("P", (width, height)).save(buffer, "GIF")
    data = buffer.getvalue()
    start = data.index(b"\x2c\x00\x00\x00\x00" + struct.pack("<HH", width, height))
    return data[:start] + data[start:-1] * frames + b";"


# Runs requests through the session loader; prints one JSON line per request.
SERVER = r"""
import json, os, resource, sys, time
import tensorflow as tf
version_dir, requests = sys.argv[1], json.load(sys.stdin)  # a long plan: not in argv
graph = tf.Graph()
sess = tf.compat.v1.Session(graph=graph)
with graph.as_default():
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
sig = meta.signature_def["serving_default"]
def predict(files):
    images = [open(f, "rb").read() for f in files]
    return sess.run(sig.outputs["probabilities"].name, {sig.inputs["image_bytes"].name: images})
def peak_mb():  # this process's peak resident memory (ru_maxrss would count the parent's)
    status = open("/proc/self/status").read().split("VmHWM:")[1]
    return int(status.split()[0]) / 1024
for name, files in requests:
    if name == "limit":  # from here on: at most `files` MB more address space
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
        limit = vm * 1024 + int(files) * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        continue
    before, start = peak_mb(), time.time()
    try:
        result = {"rows": len(predict(files))}
    except tf.errors.OpError as error:
        result = {"error": type(error).__name__ + ": " + error.message[:2000]}
    result.update(name=name, peak_before_mb=before, peak_after_mb=peak_mb(),
                  seconds=time.time() - start)
    print(json.dumps(result), flush=True)
"""


def serve_requests(version_dir, requests, headroom_mb=1500, timeout=300):
    """Runs ``requests`` ([(name, [files])]) in a fresh session-loader process after a
    warm-up request; from then on the process may grow by at most ``headroom_mb`` of
    address space. Returns {name: result}."""
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    plan = [requests[0], ("limit", headroom_mb)] + list(requests)
    result = subprocess.run([sys.executable, "-c", SERVER, version_dir], input=json.dumps(plan),
                            capture_output=True, text=True, timeout=timeout, env=env)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0:
        raise AssertionError(f"the server process died ({result.returncode}) after "
                             f"{[line['name'] for line in lines]}:\n{result.stderr[-2000:]}")
    return {line["name"]: line for line in lines[1:]}


def test_bombs_are_refused_from_the_header_and_the_server_keeps_serving(served, tmp_path):
    _, version = served

    def write(name, data):
        path = str(tmp_path / name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    normal = write("normal.jpg", _jpeg(48, 64))
    photo = write("photo.jpg", _jpeg(3000, 4000, 1))  # a legitimate 12-megapixel photo
    webp, png, jpeg = (write("bomb.webp", webp_bomb()), write("bomb.png", png_bomb()),
                       write("bomb.jpg", jpeg_bomb()))
    gif = write("frames.gif", gif_frames_bomb())
    at_limit = write("limit.png", png_bomb(5000, 5000))  # 25,000,000 pixels: served
    results = serve_requests(version, [
        ("normal", [normal]), ("webp", [webp]), ("png", [png]), ("jpeg", [jpeg]),
        ("several", [normal, png, jpeg, png, webp]), ("gif", [gif]),
        ("photo", [photo, normal]), ("at_limit", [at_limit, at_limit]),
        ("after", [normal, normal])])
    baseline = results["normal"]["peak_after_mb"]
    for name in ("webp", "png", "jpeg", "several", "gif", "photo", "at_limit", "after"):
        grew = results[name]["peak_after_mb"] - baseline
        assert grew < BOMB_BUDGET_MB, (name, grew, results[name])
    assert "image 0: unsupported image format (allowed: JPEG, PNG, GIF, BMP)" in \
        results["webp"]["error"]
    limit = f"over the limit of {DEFAULT_MAX_PIXELS} pixels (max_pixels)"
    assert results["png"]["error"].startswith("InvalidArgumentError")
    assert f"image 0: 16000x16000 PNG is 256000000 pixels, {limit}" in results["png"]["error"]
    assert f"image 0: 12000x12000 JPEG is 144000000 pixels, {limit}" in results["jpeg"]["error"]
    assert f"image 1: 16000x16000 PNG is 256000000 pixels, {limit}" in \
        results["several"]["error"]  # the first bad image of the request, by its index
    assert results["gif"] == {**results["gif"], "rows": 1}  # first frame only
    assert results["photo"]["rows"] == 2 and results["after"]["rows"] == 2
    assert results["at_limit"]["rows"] == 2  # decoded one after the other


def test_max_pixels_is_an_export_option(served, tmp_path):
    model, _ = served
    path = export_saved_model(model, str(tmp_path / "m"), name="small", max_pixels=1600)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert serve(image_bytes=tf.constant([_jpeg(40, 40)]))["probabilities"].shape == (1, 5)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="image 1: 41x40 JPEG is 1640 pixels, over the limit of 1600"):
        serve(image_bytes=tf.constant([_jpeg(40, 40), _jpeg(40, 41)]))


def test_large_jpeg_is_dct_downscaled_the_same_way_everywhere(served):
    """A JPEG 8x the model's input decodes at 1/8 (DCT scaling) in the server and in the
    preprocessing training and evaluation use: the same probabilities."""
    model, version = served
    image = _jpeg(300, 400, 3)
    serve = tf.saved_model.load(version).signatures["serving_default"]
    got = serve(image_bytes=tf.constant([image]))["probabilities"].numpy()
    np.testing.assert_allclose(got, keras_probabilities(model, [image]), atol=1e-6)
    scaled = tf.io.decode_jpeg(image, ratio=8)
    assert scaled.shape == (38, 50, 3)
    want = tf.image.resize(scaled, (32, 32))
    np.testing.assert_array_equal(keras_vit.preprocess_image(tf.constant(image), 32), want)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused_naming_the_image(served, bad):
    _, version = served
    images = np.full((3, 20, 24, 3), 100.0, np.float32)
    images[2, 5, 7, 1] = bad
    serve = tf.saved_model.load(version).signatures["serving_images"]
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"image 2: non-finite pixel values \(NaN or inf\)"):
        serve(images=tf.constant(images))


def test_empty_batch_gives_empty_outputs(served):
    _, version = served
    signatures = tf.saved_model.load(version).signatures
    for out in (signatures["serving_default"](image_bytes=tf.constant([], tf.string)),
                signatures["serving_images"](images=tf.zeros([0, 20, 20, 3]))):
        assert out["probabilities"].shape == (0, 5)
        assert out["scores"].shape == (0, 3) and out["classes"].shape == (0, 3)


def _png_1x1():
    return tf.io.encode_png(tf.zeros([1, 1, 3], tf.uint8)).numpy()


def test_a_request_over_max_batch_is_refused_before_decoding(served, tmp_path):
    """The default export refuses DEFAULT_MAX_BATCH + 1 images before decoding any (bytes
    that are no image get the batch error, not a decoding one); max_batch is an option."""
    model, version = served
    serve = tf.saved_model.load(version).signatures
    limit = re.escape(f"over the limit of {DEFAULT_MAX_BATCH} images a request (max_batch)")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"request of {DEFAULT_MAX_BATCH + 1} images, {limit}"):
        serve["serving_default"](image_bytes=tf.constant([b"x"] * (DEFAULT_MAX_BATCH + 1)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=limit):
        serve["serving_images"](images=tf.zeros([DEFAULT_MAX_BATCH + 1, 1, 1, 3]))
    out = serve["serving_default"](image_bytes=tf.constant([_png_1x1()] * DEFAULT_MAX_BATCH))
    assert out["probabilities"].shape == (DEFAULT_MAX_BATCH, 5)
    path = export_saved_model(model, str(tmp_path / "m"), name="two", max_batch=2)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert serve(image_bytes=tf.constant([_png_1x1()] * 2))["probabilities"].shape == (2, 5)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"request of 3 images, over the limit of 2 images a request"):
        serve(image_bytes=tf.constant([_png_1x1()] * 3))
    with pytest.raises(ValueError, match="max_batch must be a positive integer, got 0"):
        export_saved_model(model, str(tmp_path / "m"), name="zero", max_batch=0)


def test_ten_thousand_images_cost_the_session_server_nothing(served, tmp_path):
    """The issue's request: 10,000 1x1 PNGs (0.69 MB) in one request, through the session
    loader under an address-space limit: refused at once, the server's memory unchanged."""
    _, version = served
    one = str(tmp_path / "one.png")
    with open(one, "wb") as f:
        f.write(_png_1x1())
    results = serve_requests(version, [("normal", [one]), ("many", [one] * 10_000),
                                       ("after", [one, one])], headroom_mb=600)
    assert f"request of 10000 images, over the limit of {DEFAULT_MAX_BATCH}" in \
        results["many"]["error"]
    assert results["many"]["peak_after_mb"] - results["normal"]["peak_after_mb"] < 30
    assert results["many"]["seconds"] < 20 and results["after"]["rows"] == 2  # loaded CI
