import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from fcnseg import viz
from fcnseg.api import load
from fcnseg.cli import build_parser, main
from fcnseg.data.info import SYNTHETIC_ROADS
from fcnseg.data.io import read_image
from fcnseg.data.synthetic import render_scene
from fcnseg.inference import InferenceOptions
from fcnseg.serve import HostRule, SegmentServer, make_server

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
        self.port = self.server.server_address[1]
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
    """Labels from a function of the image: no model needed for the request-handling tests. ``calls`` counts
    predictions; with ``gate``, each prediction sets ``entered`` and waits for the gate to open."""

    info = SYNTHETIC_ROADS

    def __init__(self, labels=lambda image: (image[:, :, 0] > 127).astype(np.uint8), gate=None):
        self.labels = labels
        self.calls = 0
        self.gate = gate
        self.entered = threading.Event()

    def predict(self, image, on_forward=None):
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
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
    assert (args.host, args.port, args.max_upload_mb, args.device, args.queue) == ("127.0.0.1", 8000, 20.0, "auto", 16)


def test_page_and_script(running):
    status, response, page = running.request("GET", "/")
    assert status == 200 and response.getheader("Content-Type") == "text/html; charset=utf-8"
    for element in (b'<script src="/app.js">', b'id="file"', b'id="overlay"', b'id="opacity"', b'id="legend"',
                    b'id="download"', b'id="error"', b'id="sample"', b'id="view-mask"', b'id="view-side"',
                    b'id="pointer"', b'id="intro"'):
        assert element in page
    status, response, sample = running.request("GET", "/sample.png")  # the image the empty page offers
    assert status == 200 and response.getheader("Content-Type") == "image/png"
    assert Image.open(io.BytesIO(sample)).size == (160, 128)
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
    assert info["model_name"] == "fcn8s (vgg16)"
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
    labels = decode(result["labels_png"])  # what the page reads the class under the pointer from
    assert labels.mode == "L"
    np.testing.assert_array_equal(np.asarray(labels), expected)

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


def test_a_post_without_a_body_is_an_empty_upload(fake):
    # No Content-Length and no Transfer-Encoding: an HTTP/1.1 request body of length 0 (was a 411 of our own).
    status, _, result = fake.request("POST", "/api/segment", b"")
    assert status == 400 and "empty" in result["error"]


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


# --- who may use it: Host and Origin ----------------------------------------------------------------------------


def raw(server, data, timeout=10):
    """Everything the server sends back on one connection for ``data``, up to the server closing it (a server
    that keeps the connection open makes this raise TimeoutError)."""
    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_a_foreign_host_is_refused_before_any_work():
    fake = FakeSegmenter()
    running = Running(fake)
    port, png = running.port, encode(np.zeros((4, 5, 3), np.uint8))
    try:
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            status, _, _ = running.request("GET", "/api/info", headers={"Host": host})
            assert status == 200, host
        # DNS rebinding: a page of evil.example.com whose name now points at 127.0.0.1 sends its own name.
        for host in ("evil.example.com", f"evil.example.com:{port}", f"127.0.0.1:{port + 1}", "localhost",
                     f"127.0.0.1.evil.example:{port}", ""):
            for method, path, body in (("GET", "/api/info", None), ("GET", "/", None), ("POST", "/api/segment", png)):
                status, response, result = running.request(method, path, body, headers={"Host": host})
                assert status == 421 and "DNS rebinding" in result["error"], (host, path)
                assert f"localhost:{port}" in result["error"] and response.getheader("Connection") == "close"
        assert fake.calls == 0
        # HTTP/1.0 allows a request without Host: it names no allowed host either.
        assert raw(running.server, b"GET /api/info HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 421")
    finally:
        running.close()


def test_host_rule_for_a_named_host_and_for_all_interfaces(monkeypatch):
    named = HostRule("mybox.lan", 8000)
    assert named.allows("mybox.lan:8000") and named.allows("MyBox.lan:8000") and named.allows("127.0.0.1:8000")
    assert not named.allows("192.168.1.20:8000") and not named.allows("other.lan:8000")
    monkeypatch.setattr(socket, "gethostname", lambda: "workstation")
    everywhere = HostRule("0.0.0.0", 8000)  # any IP address: rebinding needs a name, never an address
    for host in ("192.168.1.20:8000", "[fe80::1]:8000", "workstation:8000", "localhost:8000"):
        assert everywhere.allows(host), host
    for host in ("evil.example.com:8000", "192.168.1.20:8001", "192.168.1.20", "0.0.0.0.evil:8000"):
        assert not everywhere.allows(host), host
    assert HostRule("127.0.0.1", 80).allows("localhost") and not HostRule("127.0.0.1", 81).allows("localhost")
    assert HostRule("::1", 8000).allows("[::1]:8000")


def test_a_post_from_a_foreign_origin_is_refused():
    fake = FakeSegmenter()
    running = Running(fake)
    port, png = running.port, encode(np.zeros((4, 5, 3), np.uint8))
    try:
        for origin in ("http://evil.example.com", "null", f"https://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}",
                       "http://localhost"):
            status, response, result = running.request("POST", "/api/segment", png, {"Origin": origin})
            assert status == 403 and origin in result["error"], origin
            assert response.getheader("Connection") == "close"
        assert fake.calls == 0  # nothing decoded, nothing computed
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}"):  # the page itself
            status, _, result = running.request("POST", "/api/segment", png, {"Host": host, "Origin": f"http://{host}"})
            assert status == 200 and result["width"] == 5
        # Another name of this server is another page: refused as any other site.
        status, _, _ = running.request("POST", "/api/segment", png, {"Host": f"localhost:{port}",
                                                                    "Origin": f"http://127.0.0.1:{port}"})
        assert status == 403
        # Reading is left to the browser: no CORS header, so a foreign page cannot read the answer.
        status, response, _ = running.request("GET", "/api/info", headers={"Origin": "http://evil.example.com"})
        assert status == 200 and response.getheader("Access-Control-Allow-Origin") is None
    finally:
        running.close()


def test_on_all_interfaces_a_page_at_another_ip_address_cannot_send_work():
    """With --host 0.0.0.0 the Origin check took any IP address at the port: a page served from
    http://203.0.113.7:8000 could make a visitor's server compute (found by a hostile review)."""
    fake = FakeSegmenter()
    running = Running(fake, host="0.0.0.0")
    port, png = running.port, encode(np.zeros((4, 5, 3), np.uint8))
    try:
        for origin in (f"http://203.0.113.7:{port}", f"http://8.8.8.8:{port}", f"http://[2001:db8::1]:{port}",
                       f"http://192.168.1.20:{port}"):
            status, _, result = running.request("POST", "/api/segment", png, {"Host": f"127.0.0.1:{port}",
                                                                            "Origin": origin})
            assert status == 403 and origin in result["error"], origin
        assert fake.calls == 0
        # The page opened at this machine's address on the network sends its own origin: its work is done.
        status, _, result = running.request("POST", "/api/segment", png, {"Host": f"192.168.1.20:{port}",
                                                                        "Origin": f"http://192.168.1.20:{port}"})
        assert status == 200 and fake.calls == 1
    finally:
        running.close()


@pytest.mark.parametrize("header", [b"Host: 127.0.0.1:8\xb2", b"Origin: http://127.0.0.1:1\xb2"])
def test_a_non_ascii_digit_in_a_port_is_a_refusal_not_a_500(fake, header):
    """'8²' passed str.isdigit, then int() raised: a 500 with a traceback (found by a hostile review)."""
    host = f"Host: 127.0.0.1:{fake.port}\r\n".encode()
    lines = header + b"\r\n" if header.startswith(b"Host") else host + header + b"\r\n"
    end = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    reply = raw(fake.server, b"POST /api/segment HTTP/1.1\r\n" + lines + end)
    assert reply.startswith(b"HTTP/1.1 421" if header.startswith(b"Host") else b"HTTP/1.1 403"), reply[:80]


# --- HTTP framing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    b"Content-Length: abc", b"Content-Length: 0\r\nContent-Length: 44", b"Content-Length: 0, 44",
    b"Content-Length: +0", b"Content-Length: 0_0", b"Content-Length: -0", b"Content-Length: 0x0",
    b"Content-Length: 0\r\nTransfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
], ids=["letters", "conflicting", "conflicting-list", "plus", "underscore", "minus", "hex", "length-and-chunked",
        "gzip-chunked"])
def test_bad_framing_is_a_400_and_the_connection_closes(fake, headers):
    host = f"Host: 127.0.0.1:{fake.port}\r\n".encode()
    # The body is a request of its own: a server that reads the length as 0 (Python's int() takes "+0", "0_0",
    # "-0"; the first of two headers) or answers 400 and reads on would answer it too (request smuggling).
    smuggled = b"GET /api/info HTTP/1.1\r\n" + host + b"\r\n"
    reply = raw(fake.server, b"POST /api/segment HTTP/1.1\r\n" + host + headers + b"\r\n\r\n" + smuggled)
    assert reply.startswith(b"HTTP/1.1 400") and reply.count(b"HTTP/1.1 ") == 1, reply  # raw() saw the close


def test_identical_duplicate_lengths_are_one_length_and_keep_alive_works(fake):
    # RFC 9110 8.6 lets a recipient take identical Content-Length values as one: no ambiguity to smuggle through.
    host = f"Host: 127.0.0.1:{fake.port}\r\n".encode()
    request = (b"POST /api/segment HTTP/1.1\r\n" + host + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"
               b"GET /api/info HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n")
    reply = raw(fake.server, request)
    assert reply.startswith(b"HTTP/1.1 400") and b"not an image" in reply  # "hello" was the body
    assert reply.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 200" in reply  # then the next request on the connection


def chunked(data, size):
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)) \
        + b"0\r\n\r\n"


def test_chunked_uploads_are_read_and_counted():
    running = Running(FakeSegmenter(), max_upload_bytes=2000)
    host = f"Host: 127.0.0.1:{running.port}\r\n".encode()
    head = b"POST /api/segment HTTP/1.1\r\n" + host + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    try:
        png = encode(np.zeros((6, 7, 3), np.uint8))
        reply = raw(running.server, head + chunked(png, 10))
        assert reply.startswith(b"HTTP/1.1 200") and b'"width": 7' in reply
        # No Content-Length to check first: the body is counted as it arrives and refused past the limit.
        reply = raw(running.server, head + chunked(b"x" * 3000, 500))
        assert reply.startswith(b"HTTP/1.1 413") and b"--max-upload-mb" in reply
    finally:
        running.close()


# --- bounded work: queue, memory, clients that go away -------------------------------------------------------------


def wait_for(condition, what, seconds=30):
    """Poll ``condition`` (not a timing assertion: a deadline against hanging forever)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_full_queue_answers_503_with_retry_after():
    running = Running(FakeSegmenter(), queue=1)
    png = encode(np.zeros((6, 7, 3), np.uint8))
    try:
        with socket.create_connection(running.server.server_address[:2], timeout=30) as slow:
            slow.sendall(b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % (running.port, len(png)) + png[:10])
            wait_for(lambda: len(running.server.admission.jobs) == 1, "the slow upload to be let in")
            status, response, result = running.request("POST", "/api/segment", png)
            assert status == 503 and "--queue" in result["error"]
            assert int(response.getheader("Retry-After")) >= 1
            slow.sendall(png[10:])  # the one let in is answered in full
            reply = b""
            while chunk := slow.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b'"width": 7' in reply
        status, _, _ = running.request("POST", "/api/segment", png)
        assert status == 200 and running.server.admission.jobs == []
    finally:
        running.close()


def test_memory_is_charged_per_request_against_the_budget():
    gate = threading.Event()
    fake = FakeSegmenter(gate=gate)
    png = encode(np.zeros((64, 64, 3), np.uint8))
    # A 64x64 upload is charged about 110 kB (decoded image, answer, upload): one fits in 150 kB, two do not.
    running = Running(fake, max_memory=150_000)
    try:
        first = []
        worker = threading.Thread(target=lambda: first.append(running.request("POST", "/api/segment", png)))
        worker.start()
        assert fake.entered.wait(30)
        status, response, result = running.request("POST", "/api/segment", png)
        assert status == 503 and "--max-memory" in result["error"] and int(response.getheader("Retry-After")) >= 1
        gate.set()
        worker.join(30)
        assert first[0][0] == 200 and fake.calls == 1  # the refused one was never decoded nor predicted
    finally:
        gate.set()
        running.close()
    # A chunked upload has no length to charge up front: it is charged as it arrives, not as the largest upload.
    chunked_fits = Running(FakeSegmenter(), max_memory=150_000)
    head = b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nTransfer-Encoding: chunked\r\nConnection: close" \
           b"\r\n\r\n" % chunked_fits.port
    try:
        assert raw(chunked_fits.server, head + chunked(png, 100)).startswith(b"HTTP/1.1 200")
    finally:
        chunked_fits.close()
    small = Running(FakeSegmenter(), max_memory=50_000)  # too little for this image even alone: 413, not 503
    try:
        status, _, result = small.request("POST", "/api/segment", png)
        assert status == 413 and "--max-memory" in result["error"]
    finally:
        small.close()


def test_a_client_that_goes_away_stops_its_work(checkpoint):
    # 12 windows of 32x32 over a 64x96 image; the net's first forward pass waits for the test's go.
    segmenter = load(checkpoint, device="cpu", options=InferenceOptions(mode="slide", window=(32, 32)))
    go, entered = threading.Event(), threading.Event()
    handle = segmenter.model.register_forward_pre_hook(lambda module, args: (entered.set(), go.wait(30)) and None)
    running = Running(segmenter)
    server, png = running.server, encode(render_scene(5, 64, 96)[0])
    request = b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Length: %d\r\n\r\n" % (running.port,
                                                                                                  len(png)) + png
    try:
        first = socket.create_connection(server.server_address[:2], timeout=30)
        first.sendall(request)
        assert entered.wait(30)  # computing its first window
        second = socket.create_connection(server.server_address[:2], timeout=30)
        second.sendall(request)  # waits for its turn
        wait_for(lambda: len(server.admission.jobs) == 2, "the second request to be let in")
        first.close()
        second.close()
        wait_for(lambda: server.counters["went_away"] == 1, "the waiting one to be dropped")
        wait_for(lambda: all(job.cancel.is_set() for job in server.admission.jobs), "the first one's disconnect")
        go.set()  # the first window finishes; the next one is never started
        wait_for(lambda: server.counters["went_away"] == 2, "the computing one to stop")
        assert server.counters["forward_passes"] == 1 and server.admission.jobs == []
        status, _, result = running.request("POST", "/api/segment", png)  # a client that stays gets all 12
        assert status == 200 and server.counters["forward_passes"] == 1 + 12
    finally:
        go.set()
        handle.remove()
        running.close()


def test_ctrl_c_twice_during_a_request_answers_503_not_a_traceback(capsys):
    # The second Ctrl+C makes uvicorn exit at once and the event loop cancel the request's task: the client got
    # "500 Internal Server Error" and the terminal 60 lines of traceback ending in CancelledError.
    gate = threading.Event()
    fake = FakeSegmenter(gate=gate)
    server = make_server(fake)  # not quiet: its log is what the terminal shows
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    answers = []

    def post():
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        connection.request("POST", "/api/segment", encode(render_scene(1, 32, 40)[0]))
        response = connection.getresponse()
        answers.append((response.status, response.read()))

    client = threading.Thread(target=post)
    client.start()
    try:
        assert fake.entered.wait(30)  # the request is in the worker
        for _ in range(2):  # what uvicorn's signal handler does on each Ctrl+C (it is not installed in a thread)
            server._uvicorn.handle_exit(signal.SIGINT, None)
        client.join(30)
        thread.join(30)
    finally:
        gate.set()
        server.server_close()
    assert answers == [(503, b'{"error": "the server is stopping"}')], answers
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in ASGI application" not in err, err


def test_on_forward_runs_before_every_pass_and_can_stop_the_work(segmenter):
    image = render_scene(6, 64, 96)[0]
    calls = []
    labels = segmenter.predict(image, mode="slide", window=(32, 32), on_forward=lambda: calls.append(1))
    assert len(calls) == 12
    np.testing.assert_array_equal(labels, segmenter.predict(image, mode="slide", window=(32, 32)))
    calls.clear()
    segmenter.predict(image, flip=True, on_forward=lambda: calls.append(1))
    assert len(calls) == 2  # whole image, and its mirror

    class Stop(Exception):
        pass

    def stop_at_third():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        segmenter.predict(image, mode="slide", window=(32, 32), on_forward=stop_at_third)
    assert len(calls) == 3


def memory_kb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def test_fifty_uploads_at_once_are_answered_or_503_within_the_memory_budget(segmenter):
    # Each upload is charged about 65 MB (mostly fcnseg.memory's fixed 64 MB of library buffers): 3 fit in 200 MB.
    budget = 200 * 2**20
    running = Running(segmenter, max_memory=budget, queue=8)
    images = [render_scene(seed, 64, 64)[0] for seed in range(5)]
    bodies, expected = [encode(image) for image in images], [segmenter.predict(image) for image in images]
    # The first forward pass waits until the server has refused someone: the 50 arrive while it computes.
    handle = segmenter.model.register_forward_pre_hook(
        lambda module, args: wait_for(lambda: running.server.counters["busy"] > 0, "a refusal") or None)
    answers = [None] * 50

    def upload(index):
        connection = http.client.HTTPConnection(*running.server.server_address[:2], timeout=120)
        try:
            connection.request("POST", "/api/segment", bodies[index % 5], {"Content-Type": "image/png"})
            response = connection.getresponse()
            answers[index] = (response.status, response.getheader("Retry-After"), json.loads(response.read()))
        except Exception as error:  # noqa: BLE001 - a lost request is a test failure, shown below
            answers[index] = (error, None, None)
        finally:
            connection.close()

    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM starts again from the current RSS (Linux)
        before = memory_kb("VmRSS") * 1024
        threads = [threading.Thread(target=upload, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        peak = memory_kb("VmHWM") * 1024
    finally:
        handle.remove()
        running.close()
    statuses = [status for status, _, _ in answers]
    assert set(statuses) == {200, 503}, statuses  # every one answered, some of each
    for index, (status, retry_after, result) in enumerate(answers):
        if status == 200:
            np.testing.assert_array_equal(np.asarray(decode(result["mask_png"])), expected[index % 5])
        else:
            assert int(retry_after) >= 1 and "--max-memory" in result["error"] or "--queue" in result["error"]
    assert running.server.admission.jobs == []
    # The margin stated: the process as it was before the uploads; what they added stays within the budget.
    assert peak - before <= budget, (peak - before) / 2**20


def test_cli_warns_when_listening_beyond_this_machine(checkpoint, capsys, monkeypatch):
    def interrupted(self, poll_interval=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(SegmentServer, "serve_forever", interrupted)
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        assert main(["serve", str(checkpoint), "--host", host, "--port", "0"]) == 0
        captured = capsys.readouterr()
        assert "stopped" in captured.out and ("no authentication" in captured.err) == warned, captured.err
    # --queue 0: a usage error, as every value out of an option's range (test_hostile_options.py)


def test_cli_serves_until_ctrl_c(checkpoint):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", "serve", str(checkpoint), "--port", "0",
                                "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+/", process.stdout.readline()).group(0)
        connection = http.client.HTTPConnection(url[len("http://"):-1], timeout=30)
        connection.request("POST", "/api/segment", encode(render_scene(1, 32, 40)[0]))
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0 and "stopped" in out and "Traceback" not in err, err
    assert '"POST /api/segment" 200' in err  # one line per request, through fcnseg's log


def test_memory_estimates_in_two_threads_do_not_mix():
    # The server plans a request's memory in the event loop's thread while the worker's predict plans its own:
    # both run fcnseg.memory.forward_bytes, which hooks the layers of one cached meta-device net.
    from fcnseg.memory import _meta_model, forward_bytes
    from fcnseg.models import ModelSpec

    spec = ModelSpec("fcn8s", "vgg16", num_classes=8, width=1 / 16, geometry="fast")
    small, large = forward_bytes(spec, 1, 64, 64), forward_bytes(spec, 1, 640, 640)
    meta, other = _meta_model(spec), []

    def run_the_other_one_meanwhile(module, args):
        if not other:  # inside the small estimate's forward pass: the large one starts in another thread
            other.append(None)
            thread = threading.Thread(target=lambda: other.append(forward_bytes(spec, 1, 640, 640)))
            thread.start()
            thread.join(1.0)  # with the estimates serialised it waits for this one to finish: no result yet

    handle = next(meta.modules()).register_forward_pre_hook(run_the_other_one_meanwhile)
    forward_bytes.cache_clear()  # estimates are kept by size: both must run on the meta net again
    try:
        assert forward_bytes(spec, 1, 64, 64) == small
    finally:
        handle.remove()
    wait_for(lambda: len(other) == 2, "the other estimate")
    assert other[1] == large
