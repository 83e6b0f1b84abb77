import base64
import http.client
import io
import json
import socket
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image

from fcnseg import viz
from fcnseg.api import load
from fcnseg.cli import build_parser
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import read_image
from fcnseg.data.synthetic import render_scene
from fcnseg.serve import make_server

from .helpers import refused

H, W = 60, 84


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint

@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return load(checkpoint, device="cpu")


class Running:
    """A server on a free port, serving from a background thread."""

    def __init__(self, segmenter, **options):
        self.server = make_server(segmenter, quiet=True, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def request(self, method, path, body=None, headers=None):
        """(status, headers, parsed JSON or raw bytes) of one request on a fresh connection."""
        host, port = self.server.server_address[:2]
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            content_type = response.getheader("Content-Type", "")
            return response.status, response, json.loads(data) if content_type == "application/json" else data
        finally:
            connection.close()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def running(segmenter):
    server = Running(segmenter)
    yield server
    server.close()


class FakeSegmenter:
    """Labels from a function of the image: no model needed for the request-handling tests."""

    info = SYNTHETIC_ROADS

    def __init__(self, labels=lambda image: (image[:, :, 0] > 127).astype(np.uint8)):
        self.labels = labels

    def predict(self, image):
        return self.labels(image)


def encode(array, fmt="PNG", **params):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def decode(b64):
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_default_host_is_loopback():
    server = make_server(FakeSegmenter())
    try:
        assert server.server_address[0] == "127.0.0.1"
        assert server.server_address[1] > 0
        assert server.url == f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.server_close()
    args = build_parser().parse_args(["serve", "model.pth"])
    assert (args.host, args.port, args.max_upload_mb, args.device) == ("127.0.0.1", 8000, 20.0, "auto")


def test_page_and_script(running):
    status, response, page = running.request("GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    for element in (b'<script src="/app.js">', b'id="file"', b'id="overlay"', b'id="opacity"', b'id="legend"',
                    b'id="download"', b'id="error"'):
        assert element in page
    status, response, script = running.request("GET", "/app.js")
    assert status == 200 and response.getheader("Content-Type").startswith("text/javascript")
    assert b'"/api/segment"' in script and b'"/api/info"' in script
    status, _, error = running.request("GET", "/nothing")
    assert status == 404 and "/nothing" in error["error"]


def test_info(running, segmenter):
    status, _, info = running.request("GET", "/api/info")
    assert status == 200
    assert info["dataset"] == "synthetic_roads" and info["num_classes"] == 8
    assert [c["name"] for c in info["classes"]] == list(SYNTHETIC_ROADS.class_names)
    assert info["classes"][2]["color"] == "#804080"  # road (128, 64, 128)
    assert info["model"] == json.loads(json.dumps(segmenter.config))  # the architecture, as JSON has it
    assert info["normalization"] == "imagenet" and info["device"] == "cpu"
    assert info["max_upload_bytes"] == 20 * 2**20


def test_segment_png_matches_predict(running, segmenter):
    image = render_scene(3, H, W)[0]
    expected = segmenter.predict(image)
    status, _, result = running.request("POST", "/api/segment", encode(image), {"Content-Type": "image/png"})
    assert status == 200, result
    assert (result["width"], result["height"]) == (W, H)

    mask = decode(result["mask_png"])
    assert mask.mode == "P"  # a palette PNG: pixel values are class ids, viewers show the class colours
    np.testing.assert_array_equal(np.asarray(mask), expected)
    assert mask.getpalette()[: 3 * 8] == list(np.asarray(SYNTHETIC_ROADS.palette).ravel())
    np.testing.assert_array_equal(np.asarray(decode(result["color_png"])), viz.colorize(expected, SYNTHETIC_ROADS))
    np.testing.assert_array_equal(np.asarray(decode(result["image_png"])), image)

    counts = np.bincount(expected.ravel(), minlength=8)
    assert len(np.flatnonzero(counts)) >= 2, "the test model should predict several classes"
    ids = [c["id"] for c in result["classes"]]
    assert sorted(ids) == list(np.flatnonzero(counts))
    assert [c["share"] for c in result["classes"]] == sorted((c["share"] for c in result["classes"]), reverse=True)
    for c in result["classes"]:
        assert c["share"] == pytest.approx(counts[c["id"]] / (H * W))
        assert c["name"] == SYNTHETIC_ROADS.class_names[c["id"]]
    assert sum(c["share"] for c in result["classes"]) == pytest.approx(1.0, abs=1e-9)


def test_jpeg_with_exif_rotation_is_read_like_a_file(running, segmenter, tmp_path):
    image = render_scene(4, H, W)[0]
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    data = encode(image, "JPEG", quality=95, exif=exif)
    (tmp_path / "photo.jpg").write_bytes(data)
    upright = read_image(tmp_path / "photo.jpg")
    assert upright.shape == (W, H, 3)
    status, _, result = running.request("POST", "/api/segment", data)
    assert status == 200, result
    assert (result["width"], result["height"]) == (H, W)
    np.testing.assert_array_equal(np.asarray(decode(result["image_png"])), upright)
    np.testing.assert_array_equal(np.asarray(decode(result["mask_png"])), segmenter.predict(upright))


@pytest.fixture(scope="module")
def fake():
    server = Running(FakeSegmenter())
    yield server
    server.close()


@pytest.mark.parametrize("body, names", [
    (b"just some text, not a picture", ("not an image",)),
    (b"", ("empty",)),
    (encode(np.zeros((8, 8, 3), np.uint8), "GIF"), ("GIF", "JPEG", "PNG")),  # the format, and those accepted
    (encode(np.zeros((8, 8, 3), np.uint8))[:45], ("corrupt",)),
], ids=["text", "empty", "gif", "truncated-png"])
def test_non_images_are_refused(fake, body, names):
    status, _, result = fake.request("POST", "/api/segment", body)
    assert status == 400
    assert all(name in result["error"] for name in names), result["error"]
    assert "upload" in result["error"] and "/tmp" not in result["error"]


def test_oversize_upload_is_refused_and_the_server_carries_on():
    running = Running(FakeSegmenter(), max_upload_bytes=1000)
    try:
        status, response, result = running.request("POST", "/api/segment", b"x" * 300_000)
        assert status == 413 and "at most" in result["error"] and "--max-upload-mb" in result["error"]
        assert response.getheader("Connection") == "close"
        small = encode(np.zeros((4, 5, 3), np.uint8))
        assert len(small) < 1000
        status, _, result = running.request("POST", "/api/segment", small)
        assert status == 200 and (result["width"], result["height"]) == (5, 4)
    finally:
        running.close()


def test_missing_content_length_is_refused(fake):
    with socket.create_connection(fake.server.server_address[:2], timeout=10) as sock:
        sock.sendall(b"POST /api/segment HTTP/1.1\r\nHost: localhost\r\n\r\n")
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 411")
    assert "Content-Length" in json.loads(body)["error"]


def png_header_only(width, height):
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb stand-in)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def test_too_many_pixels_are_refused_before_decoding():
    running = Running(FakeSegmenter(), max_pixels=100)
    try:
        status, _, result = running.request("POST", "/api/segment", encode(np.zeros((20, 20, 3), np.uint8)))
        assert status == 413 and "400 pixels" in result["error"] and "--max-pixels" in result["error"]
        assert "the uploaded file" in result["error"]
        # Refused from the header alone: decoding these would need 48 MB and 10.8 GB.
        status, _, result = running.request("POST", "/api/segment", png_header_only(4000, 4000))
        assert status == 413 and "16,000,000 pixels" in result["error"] and "the limit of 100 " in result["error"]
        status, _, result = running.request("POST", "/api/segment", png_header_only(60_000, 60_000))
        assert status == 413 and "the limit of 100 " in result["error"]
    finally:
        running.close()


def test_model_failure_is_a_500_with_a_message():
    running = Running(FakeSegmenter(lambda image: np.full(image.shape[:2], 9, np.uint8)))
    try:
        status, _, result = running.request("POST", "/api/segment", encode(np.zeros((4, 5, 3), np.uint8)))
        assert status == 500 and "class ids 9..9" in result["error"]
    finally:
        running.close()


def test_elapsed_ms_is_the_model_time(monkeypatch):
    # A clock that moves only when told: the model takes 0.25 s of it and decoding the upload 7 s, so
    # elapsed_ms is 250 exactly when it times the model call and nothing else (no sleeping, no timing bounds).
    import time
    from types import SimpleNamespace

    import fcnseg.serve as serve

    clock = [100.0]
    monkeypatch.setattr(serve, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))
    decode = serve.decode_upload

    def slow_decode(*args, **kwargs):
        clock[0] += 7.0
        return decode(*args, **kwargs)

    def slow_model(image):
        clock[0] += 0.25
        return np.zeros(image.shape[:2], np.uint8)

    monkeypatch.setattr(serve, "decode_upload", slow_decode)
    running = Running(FakeSegmenter(slow_model))
    try:
        status, _, result = running.request("POST", "/api/segment", encode(np.zeros((4, 5, 3), np.uint8)))
        assert status == 200 and result["elapsed_ms"] == 250.0
    finally:
        running.close()


def test_cli_reports_a_busy_port(checkpoint, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        refused(capsys, ["serve", checkpoint, "--port", port], f"127.0.0.1:{port}")  # the address that is taken
    # --max-upload-mb 0 (a usage error now, as every value out of an option's range): test_hostile_options.py
