"""Fixtures shared across the test files: threads, tiny models and checkpoints, free ports, a local HTTP server."""

from __future__ import annotations

import functools
import re
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from fcnseg.checkpoint import save_model
from fcnseg.data.info import SYNTHETIC_ROADS

from .helpers import random_fcn


@pytest.fixture
def one_thread():
    """Tiny convolutions on a shared CPU run far faster on one thread than on contended threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model():
    """``random_fcn``: build a small random FCN (keywords as build_model's, plus ``seed``)."""
    return random_fcn


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A width-1/16 FCN-8s on the synthetic classes with random convolutions, saved as a checkpoint."""
    return save_model(random_fcn(), SYNTHETIC_ROADS, tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _FolderHandler(SimpleHTTPRequestHandler):
    """Serves a folder with single open-ended Range support ("bytes=N-"), like real download hosts."""

    def do_GET(self) -> None:
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match.group(1)) if match and not server.ignore_range else None
        if start is not None and start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if start is not None:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        # "truncate" simulates a dropped connection: promise the full length, send half, hang up.
        self.wfile.write(data[: len(data) // 2] if server.truncate else data)
        if server.truncate:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class LocalServer:
    """A folder served over HTTP on 127.0.0.1; ``requests`` lists (path, Range header) of every GET."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_FolderHandler, directory=str(folder)))
        self.httpd.daemon_threads = True
        self.httpd.requests, self.httpd.ignore_range, self.httpd.truncate = [], False, False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval makes shutdown() return quickly (the default waits up to 0.5 s).
        threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True).start()

    @property
    def requests(self) -> list[tuple[str, str | None]]:
        return self.httpd.requests

    def set(self, ignore_range: bool | None = None, truncate: bool | None = None) -> None:
        if ignore_range is not None:
            self.httpd.ignore_range = ignore_range
        if truncate is not None:
            self.httpd.truncate = truncate

    def stop(self) -> None:
        """Shut down and close the socket: later connections are refused at once (never left hanging)."""
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    """``http_server()`` serves a new folder (``.folder``) on 127.0.0.1 until the test ends."""
    servers: list[LocalServer] = []

    def serve(folder: Path | None = None) -> LocalServer:
        folder = folder or tmp_path / f"served{len(servers)}"
        folder.mkdir(parents=True, exist_ok=True)
        servers.append(LocalServer(folder))
        return servers[-1]

    yield serve
    for server in servers:
        if server.httpd.socket.fileno() != -1:
            server.stop()
