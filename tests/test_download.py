"""download_file / cached_download against a real HTTP server on 127.0.0.1 that supports Range."""

from __future__ import annotations

import functools
import hashlib
import io
import re
import socket
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fcnseg.download import DownloadError, cache_dir, cached_download, download_file, file_digest

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several read chunks' worth of distinct bytes
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


class RangeHandler(SimpleHTTPRequestHandler):
    """Serves files with single open-ended Range support ("bytes=N-"), like real download hosts."""

    def do_GET(self) -> None:
        server = self.server
        range_header = self.headers.get("Range")
        server.ranges.append(range_header)
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            body = data[start:]
        else:
            self.send_response(200)
            body = data
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # "truncate" simulates a dropped connection: promise the full length, send half, hang up.
        self.wfile.write(body[: len(body) // 2] if server.truncate else body)
        if server.truncate:
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class Server:
    def __init__(self, directory: Path) -> None:
        handler = functools.partial(RangeHandler, directory=str(directory))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.ranges = []
        self.httpd.ignore_range = False
        self.httpd.truncate = False
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # A short poll interval makes shutdown() return quickly (the default waits up to 0.5 s).
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.pth").write_bytes(PAYLOAD)
    srv = Server(served)
    yield srv
    srv.stop()


def test_plain_download_verifies_sha256_and_md5(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "weights.pth"
    result = download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, md5=MD5, progress=False)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("weights.pth.part").exists()
    assert server.httpd.ranges == [None]
    assert file_digest(dest, "sha256") == SHA256 and file_digest(dest, "md5") == MD5


def test_hash_prefix_is_accepted_and_short_prefix_rejected(server: Server, tmp_path: Path) -> None:
    dest = download_file(f"{server.url}/weights.pth", tmp_path / "w.pth", sha256=SHA256[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(ValueError, match="8 to 64 hex"):
        download_file(f"{server.url}/weights.pth", tmp_path / "x.pth", sha256=SHA256[:6], progress=False)


def test_checksum_mismatch_raises_and_leaves_nothing(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    wrong = "0" * 64
    url = f"{server.url}/weights.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and SHA256 in message
    assert not dest.exists()
    assert not tmp_path.joinpath("w.pth.part").exists()


def test_resumes_partial_file_with_range_request(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    half = len(PAYLOAD) // 2
    dest.with_name("w.pth.part").write_bytes(PAYLOAD[:half])
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    assert server.httpd.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_scratch(server: Server, tmp_path: Path) -> None:
    server.httpd.ignore_range = True
    dest = tmp_path / "w.pth"
    # Garbage in the .part: if it were kept and appended to, the result would be wrong.
    dest.with_name("w.pth.part").write_bytes(b"\xff" * 1000)
    download_file(f"{server.url}/weights.pth", dest, md5=MD5, progress=False)
    assert server.httpd.ranges == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_answered_416_is_finished(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(PAYLOAD)
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_keeps_part_and_next_call_resumes(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    url = f"{server.url}/weights.pth"
    server.httpd.truncate = True
    with pytest.raises(DownloadError, match="resume"):
        download_file(url, dest, sha256=SHA256, progress=False)
    part = dest.with_name("w.pth.part")
    assert part.stat().st_size == len(PAYLOAD) // 2 and not dest.exists()
    server.httpd.truncate = False
    download_file(url, dest, sha256=SHA256, progress=False)
    assert server.httpd.ranges[-1] == f"bytes={len(PAYLOAD) // 2}-"
    assert dest.read_bytes() == PAYLOAD


def test_http_404_names_url_and_destination(server: Server, tmp_path: Path) -> None:
    url = f"{server.url}/missing.pth"
    dest = tmp_path / "missing.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False)
    assert url in str(info.value) and "404" in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()


def test_unreachable_host_suggests_offline(tmp_path: Path) -> None:
    with socket.socket() as s:  # grab a free port, then close it: connecting is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/weights.pth"
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False, timeout=5)
    message = str(info.value)
    assert url in message and "offline" in message and str(dest) in message
    assert info.value.__cause__ is None  # the message stands alone, no urllib traceback chained


def test_existing_file_is_reused_without_network(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    server.stop()
    assert download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False) == dest
    assert download_file(f"{server.url}/weights.pth", dest, progress=False) == dest
    assert server.httpd.ranges == [None]


def test_existing_file_with_bad_checksum_is_replaced(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"stale")
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_cache_dir_honours_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cache_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_cached_download_reuses_cache(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    url = f"{server.url}/weights.pth"
    path = cached_download(url, sha256=SHA256[:10])
    assert path == tmp_path / "th" / "hub" / "checkpoints" / "weights.pth"
    assert path.read_bytes() == PAYLOAD
    named = cached_download(url, md5=MD5, file_name="renamed.pth")
    assert named.name == "renamed.pth"
    server.stop()
    assert cached_download(url, sha256=SHA256[:10]) == path


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_only_on_a_terminal(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    download_file(f"{server.url}/weights.pth", tmp_path / "a.pth", progress=True)
    assert plain.getvalue() == ""
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    download_file(f"{server.url}/weights.pth", tmp_path / "b.pth", progress=True)
    assert f"/ {len(PAYLOAD) / 1e6:.1f} MB" in tty.getvalue()


def test_cli_download_names_the_known_datasets(tmp_path, capsys):
    from fcnseg.cli import main

    assert main(["download", "imagenet", "--root", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fcnseg: error:") and "voc2012" in error and "camvid" in error
