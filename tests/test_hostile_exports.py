"""Hostile use, "every export usable": exports in every command, files of the wrong kind, the web server's
uploads and headers, and messages about weight files."""

import http.client
import io
import json
import logging
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


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx", "torchscript"])
def test_a_file_whose_weights_changed_since_it_was_written_is_refused(tiny_checkpoint, exports, tmp_path, capsys,
                                                                      fmt):
    # 20 flipped bytes: all 18 damaged files of the three formats loaded without a word, and predicted other labels
    # (3% to 98% of the checkpoint's); torch does not check its archives' CRCs, and ONNX files carried none.
    source = tiny_checkpoint if fmt == "checkpoint" else exports[fmt]
    data = bytearray(source.read_bytes())
    for offset in (0.55, 0.6, 0.65):  # inside the weights, which are most of each file
        data[int(offset * len(data))] ^= 0xFF
    damaged = tmp_path / f"damaged{source.suffix}"
    damaged.write_bytes(bytes(data))
    with pytest.raises(WeightsError) as caught:
        load(damaged, device="cpu")
    error_names(caught, damaged, "damaged", "again")
    refused(capsys, ["predict", damaged, write_png(tmp_path / "a.png"), "--out", tmp_path / "out", "--threads", "1"],
            damaged, "damaged")
    load(source, device="cpu")  # the intact file: no complaint


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
    assert status == 400 and "the form holds no file, only text field(s) 'a'" in result["error"]
    # A real PNG sent as a text field (curl -F "file=<photo.png") was called "not an image": it is text by then.
    text = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n").encode() + png_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    status, _, result = post(server, text, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 400 and "only text field(s) 'file'" in result["error"] and "-F file=@photo.jpg" in result["error"]


def host(server):
    return b"Host: 127.0.0.1:%d\r\n" % server.server_address[1]  # the server answers to its own address only


def test_a_stalled_upload_is_a_408(server):
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /api/segment HTTP/1.1\r\n" + host(server) + b"Content-Length: 1000\r\n\r\n" + b"x" * 10)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"the upload stalled" in reply


def test_clients_that_go_away_cost_one_log_line_each(server, capfd, caplog):
    caplog.set_level(logging.INFO, logger="fcnseg")
    for _ in range(5):
        with socket.create_connection(server.server_address[:2], timeout=30) as sock:
            sock.sendall(b"POST /api/segment HTTP/1.1\r\n" + host(server) + b"Content-Length: 100000\r\n\r\n"
                         + b"x" * 100)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with a reset
    deadline = time.monotonic() + 30
    while server.counters["went_away"] < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [record for record in caplog.records if record.name.startswith("fcnseg")]
    assert "Traceback" not in capfd.readouterr().err and not any(record.exc_info for record in lines)
    # Each client costs one line, through fcnseg's log: "went away".
    assert len(lines) == 5 and all("went away during the upload" in record.getMessage() for record in lines), lines


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


def test_chunked_uploads_are_read(server):
    # Once refused with 411 (the hand-written server could not frame them); now h11 reads them and the upload
    # limit counts their bytes as they arrive (tests/test_serve.py::test_chunked_uploads_are_read_and_counted).
    with socket.create_connection(server.server_address[:2], timeout=30) as sock:
        sock.sendall(b"POST /api/segment HTTP/1.1\r\n" + host(server) + b"Transfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400") and b"not an image" in reply  # the 5 bytes reached the decoder


def test_fifty_uploads_at_once_are_all_answered(serving):
    server = serving()  # the default queue (16): the others are told to come back, none is left unanswered
    body, results = png_bytes((24, 32)), []

    def upload():
        status, headers, _ = post(server, body, {"Content-Type": "image/png"})
        results.append((status, {name.lower(): value for name, value in headers.items()}.get("retry-after")))

    threads = [threading.Thread(target=upload) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 50 and {status for status, _ in results} <= {200, 503}
    assert all(int(wait) >= 1 for status, wait in results if status == 503)
    assert any(status == 200 for status, _ in results)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_page_names_the_model_of_every_export(exports, fmt):
    server = make_server(load(exports[fmt], device="cpu"), quiet=True)
    try:
        assert server.info()["model_name"] == "fcn8s (vgg16)"  # read from the spec the export carries
    finally:
        server.server_close()


def test_an_export_is_written_in_the_format_its_name_says(tiny_checkpoint, tmp_path, capsys):
    # `fcnseg export CK --out model.pt` wrote ONNX under a TorchScript name (torch.jit.load then failed on it);
    # --format against the name wrote the other way round.
    base = ["export", str(tiny_checkpoint), "--threads", "1"]
    assert main([*base, "--out", str(tmp_path / "model.pt")]) == 0
    assert "(torchscript;" in capsys.readouterr().out
    assert (tmp_path / "model.pt").read_bytes()[:2] == b"PK"  # a TorchScript archive is a zip; ONNX is protobuf
    assert main([*base, "--out", str(tmp_path / "model")]) == 0  # no suffix: ONNX, the default
    assert "(onnx;" in capsys.readouterr().out
    refused(capsys, [*base, "--out", tmp_path / "m.onnx", "--format", "torchscript"], "m.onnx", "m.pt",
            "--format onnx")
    refused(capsys, [*base, "--out", tmp_path / "m.pt", "--format", "onnx"], "m.pt", "m.onnx", "--format torchscript")
    refused(capsys, [*base, "--out", tmp_path / "m.pt", "--int8", "--calibrate", "dataset=synthetic"], "m.pt",
            "--int8", "m.onnx")
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()


def test_an_onnx_export_changed_on_purpose_says_how_to_keep_the_change(exports, tmp_path):
    # An added metadata entry (or a conversion to external data) was "damaged ... a failing disk or copy?".
    import onnx

    model = onnx.load(str(exports["onnx"]))
    entry = model.metadata_props.add()
    entry.key, entry.value = "mine", "a note"
    onnx.save(model, str(tmp_path / "noted.onnx"))
    with pytest.raises(WeightsError) as caught:
        load(tmp_path / "noted.onnx", device="cpu")
    error_names(caught, "changed since it was exported", "edited", "fcnseg.sha256")
    kept = [e for e in model.metadata_props if e.key != "fcnseg.sha256"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "noted.onnx"))
    assert load(tmp_path / "noted.onnx", device="cpu").spec == load(exports["onnx"], device="cpu").spec


@pytest.mark.parametrize("fmt", ["checkpoint", "onnx", "torchscript"])
def test_a_model_or_image_file_this_user_cannot_read_is_one_line(tiny_checkpoint, exports, tmp_path, capsys,
                                                                  monkeypatch, fmt):
    # Run as another user than the files' owner (chmod 600): a PermissionError traceback from predict, eval, serve
    # and export; an unreadable image was "truncated or corrupt ... Re-download". Tests run as root, who reads
    # everything, so the kernel's refusal is played by open().
    import builtins
    import pathlib

    model = tiny_checkpoint if fmt == "checkpoint" else exports[fmt]
    image, readable = write_png(tmp_path / "secret.png"), write_png(tmp_path / "a.png")
    locked = {str(model), str(image)}
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def refuse(file, *args, **kwargs):
        if str(file) in locked:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    def refuse_path(self, *args, **kwargs):
        if str(self) in locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_path_open(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", refuse)
    monkeypatch.setattr(pathlib.Path, "open", refuse_path)
    with pytest.raises(WeightsError) as caught:
        load(model, device="cpu")
    error_names(caught, model, "cannot be read", "Permission denied", "read access")
    refused(capsys, ["predict", model, readable, "--out", tmp_path / "out", "--threads", "1"], model, "cannot be read")
    locked.discard(str(model))
    with pytest.raises(Exception) as caught:
        load(model, device="cpu").predict(image)
    error_names(caught, image, "permission denied")
    assert "corrupt" not in str(caught.value)
