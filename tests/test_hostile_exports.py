"""Hostile use, "every export usable": exports in every command, files of the wrong kind, the web server's
uploads and headers, and messages about weight files."""

import http.client
import io
import json
import os
import pickle
import socket
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.api import load
from fcnseg.cli import main
from fcnseg.errors import WeightsError
from fcnseg.models.weights import load_state_dict_file
from fcnseg.serve import make_server

from .helpers import error_names, refused, write_png


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("exports")
    paths = {"onnx": folder / "model.onnx", "torchscript": folder / "model.pt"}
    for fmt, path in paths.items():
        assert main(["export", str(tiny_checkpoint), "--format", fmt, "--out", str(path), "--quiet"]) == 0
    return paths


# --- 14. exports are read by every command that reads a model ------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_eval_scores_an_export_as_its_checkpoint(tiny_checkpoint, exports, tmp_path, capsys, fmt):
    argv = ["--dataset", "synthetic", "--limit", "2", "--workers", "0", "--threads", "1", "--quiet"]
    assert main(["eval", str(tiny_checkpoint), *argv, "--out", str(tmp_path / "ckpt")]) == 0
    assert main(["eval", str(exports[fmt]), *argv, "--out", str(tmp_path / fmt)]) == 0
    scores = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("ckpt", fmt)]
    assert scores[1]["title"] == "fcn8s (vgg16)"
    assert scores[1]["mean_iu"] == pytest.approx(scores[0]["mean_iu"], abs=1e-3)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_export_where_a_checkpoint_is_needed_gets_a_hint(exports, tmp_path, capsys, fmt):
    kind = "ONNX" if fmt == "onnx" else "TorchScript"  # what the file is, and what to give instead
    refused(capsys, ["export", exports[fmt], "--out", tmp_path / "again.onnx"], exports[fmt].name, kind, "checkpoint")


# --- 15. the web server ---------------------------------------------------------------------------------------------


@pytest.fixture
def serving(exports):
    """``serving(timeout)``: a server of the TorchScript export, stopped at the end of the test."""
    servers = []

    def start(timeout: float = 60.0):
        servers.append(make_server(load(exports["torchscript"], device="cpu"), quiet=False, timeout=timeout))
        threading.Thread(target=servers[-1].serve_forever, args=(0.05,), daemon=True).start()
        return servers[-1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(serving):
    return serving(timeout=1.0)  # short, for the stalled upload


def png_bytes(size=(48, 64)):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def post(server, body, headers):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    try:
        connection.request("POST", "/api/segment", body=body, headers=headers)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_a_browser_style_form_upload_is_accepted(server):
    boundary = "----fcnseg7b3"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_bytes() + f"\r\n--{boundary}--\r\n".encode()
    status, _, result = post(server, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 200 and (result["width"], result["height"]) == (64, 48)
    empty = f"--{boundary}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--{boundary}--\r\n".encode()
    status, _, result = post(server, empty + b"", {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and "the uploaded file" in result["error"]  # the only part, and not an image


def test_a_stalled_upload_is_a_408(server):
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"the upload stalled" in reply


def test_clients_that_go_away_cost_one_log_line_each(server, capfd):
    for _ in range(5):
        with socket.create_connection(server.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    time.sleep(1.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err
    # Each client costs at most one line: "went away", or the request line of its refused upload.
    assert len(err.strip().splitlines()) <= 5 and err.count("went away") >= 1, err


def test_headers_forbid_framing_and_hide_the_python_version(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
    connection.request("GET", "/")
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.getheader("X-Frame-Options") == "DENY"
    assert "frame-ancestors 'none'" in response.getheader("Content-Security-Policy")
    assert response.getheader("Server") == "fcnseg"


# --- 16. messages about weight files ---------------------------------------------------------------------------------


class _Planted:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_malicious_pickle_is_refused_never_run_and_said_so(tmp_path, capsys):
    planted = tmp_path / "code-ran"
    torch.save({"model": _Planted(str(planted))}, tmp_path / "evil.pth")
    with open(tmp_path / "evil.pkl", "wb") as handle:
        pickle.dump({"model": _Planted(str(planted))}, handle, protocol=4)
    for name in ("evil.pth", "evil.pkl"):
        with pytest.raises(WeightsError) as caught:
            load_state_dict_file(tmp_path / name)
        error_names(caught, name, "pickle", "state_dict")  # the file, why, and how to re-save its tensors
        refused(capsys, ["predict", tmp_path / name, write_png(tmp_path / "a.png"), "--out", tmp_path / "out"],
                name, "pickle")
    assert not planted.exists()


def test_terminal_colour_codes_are_stripped_from_wrapped_messages(tmp_path, monkeypatch):
    def coloured(*args, **kwargs):
        raise pickle.UnpicklingError("Weights only load failed.\n\x1b[1mTrying to load unsupported GLOBAL "
                                     "os.system\x1b[0m")

    monkeypatch.setattr(torch, "load", coloured)
    (tmp_path / "w.pth").write_bytes(b"\x80\x02")
    with pytest.raises(WeightsError) as caught:
        load_state_dict_file(tmp_path / "w.pth")
    assert "\x1b" not in str(caught.value) and "unsupported GLOBAL os.system" in str(caught.value)
    assert os.path.exists(tmp_path / "w.pth")


# --- what already held, kept: traversal, chunked uploads, many uploads at once ---------------------------------------


def test_paths_outside_the_page_are_not_served(server):
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/web/index.html", "//etc/passwd"):
        connection = http.client.HTTPConnection(*server.server_address[:2], timeout=30)
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 404 and b"root:" not in body, path


def test_chunked_uploads_are_refused(server):
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):  # the server closes the connection after a 411
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 411") and b"chunked uploads are not supported" in reply


def test_fifty_uploads_at_once_are_all_answered(serving):
    server = serving()  # the default timeout: 50 clients in this one process may wait a while for their turn
    body, results = png_bytes((24, 32)), []

    def upload():
        results.append(post(server, body, {"Content-Type": "image/png"})[0])

    threads = [threading.Thread(target=upload) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == [200] * 50
