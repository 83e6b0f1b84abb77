"""download_file / cached_download against a real HTTP server on 127.0.0.1 that supports Range."""

from __future__ import annotations

import hashlib
import io
import os
import sys
import threading
from pathlib import Path

import pytest

from fcnseg.errors import ConfigError, DownloadError
from fcnseg.transfer import cache_dir, cached_download, download_file, file_digest

from .helpers import refused

PAYLOAD = bytes(range(256)) * 400  # 100 KiB, several read chunks' worth of distinct bytes
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


@pytest.fixture
def server(http_server):
    srv = http_server()
    (srv.folder / "weights.pth").write_bytes(PAYLOAD)
    return srv


def ranges(server) -> list[str | None]:
    return [header for _, header in server.requests]


def test_plain_download_verifies_sha256_and_md5(server, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "weights.pth"
    result = download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, md5=MD5, progress=False)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("weights.pth.part").exists()
    assert ranges(server) == [None]
    assert file_digest(dest, "sha256") == SHA256 and file_digest(dest, "md5") == MD5


def test_hash_prefix_is_accepted_and_short_prefix_rejected(server, tmp_path: Path) -> None:
    dest = download_file(f"{server.url}/weights.pth", tmp_path / "w.pth", sha256=SHA256[:8], progress=False)
    assert dest.read_bytes() == PAYLOAD
    with pytest.raises(ConfigError, match="8 to 64 hex"):
        download_file(f"{server.url}/weights.pth", tmp_path / "x.pth", sha256=SHA256[:6], progress=False)


def test_checksum_mismatch_raises_and_leaves_nothing(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    wrong = "0" * 64
    url = f"{server.url}/weights.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, sha256=wrong, progress=False)
    message = str(info.value)
    assert url in message and wrong in message and SHA256 in message
    assert not dest.exists()
    assert not tmp_path.joinpath("w.pth.part").exists()


def test_resumes_partial_file_with_range_request(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    half = len(PAYLOAD) // 2
    dest.with_name("w.pth.part").write_bytes(PAYLOAD[:half])
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    assert ranges(server) == [f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_scratch(server, tmp_path: Path) -> None:
    server.set(ignore_range=True)
    dest = tmp_path / "w.pth"
    # Garbage in the .part: if it were kept and appended to, the result would be wrong.
    dest.with_name("w.pth.part").write_bytes(b"\xff" * 1000)
    download_file(f"{server.url}/weights.pth", dest, md5=MD5, progress=False)
    assert ranges(server) == ["bytes=1000-"]
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_file_answered_416_is_finished(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(PAYLOAD)
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_dropped_connection_keeps_part_and_next_call_resumes(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    url = f"{server.url}/weights.pth"
    server.set(truncate=True)
    with pytest.raises(DownloadError, match="resume"):
        download_file(url, dest, sha256=SHA256, progress=False)
    part = dest.with_name("w.pth.part")
    assert part.stat().st_size == len(PAYLOAD) // 2 and not dest.exists()
    server.set(truncate=False)
    download_file(url, dest, sha256=SHA256, progress=False)
    assert ranges(server)[-1] == f"bytes={len(PAYLOAD) // 2}-"
    assert dest.read_bytes() == PAYLOAD


def test_http_404_names_url_and_destination(server, tmp_path: Path) -> None:
    url = f"{server.url}/missing.pth"
    dest = tmp_path / "missing.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False)
    assert url in str(info.value) and "404" in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()


def test_unreachable_host_suggests_offline(tmp_path: Path, free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/weights.pth"  # nothing listens there: connecting is refused
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as info:
        download_file(url, dest, progress=False, timeout=5)
    message = str(info.value)
    assert url in message and "offline" in message and str(dest) in message
    assert info.value.__cause__ is None  # the message stands alone, no urllib traceback chained


def test_existing_file_is_reused_without_network(server, tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    server.stop()
    assert download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False) == dest
    assert download_file(f"{server.url}/weights.pth", dest, progress=False) == dest
    assert ranges(server) == [None]


def test_an_existing_file_with_another_checksum_is_refused_and_kept(server, tmp_path: Path) -> None:
    """A copy the user placed by hand that fails the checksum was replaced without asking (and offline, the message
    told them to place the file that was already there)."""
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"my copy")
    with pytest.raises(DownloadError) as info:
        download_file(f"{server.url}/weights.pth", dest, sha256=SHA256, progress=False)
    message = str(info.value)
    assert f"{dest} exists but is not the file" in message and "Move it away or delete it" in message
    assert SHA256 in message and hashlib.sha256(b"my copy").hexdigest() in message
    assert dest.read_bytes() == b"my copy" and ranges(server) == []  # left as it is, nothing fetched
    assert not dest.with_name("w.pth.part").exists()


def test_a_stale_file_in_the_cache_is_replaced(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    stale = cache_dir() / "weights.pth"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    assert cached_download(f"{server.url}/weights.pth", sha256=SHA256) == stale
    assert stale.read_bytes() == PAYLOAD


@pytest.mark.parametrize("where", ["w.pth", "w.pth.part"])
def test_a_folder_where_the_file_goes_is_one_line_before_any_transfer(server, tmp_path: Path, where) -> None:
    (tmp_path / where).mkdir()
    with pytest.raises(DownloadError) as info:
        download_file(f"{server.url}/weights.pth", tmp_path / "w.pth", progress=False)
    assert f"{tmp_path / where} is a folder" in str(info.value) and ranges(server) == []


def test_a_failed_first_request_leaves_no_empty_part(tmp_path: Path, free_port: int) -> None:
    with pytest.raises(DownloadError):
        download_file(f"http://127.0.0.1:{free_port}/w.pth", tmp_path / "w.pth", progress=False, timeout=5)
    assert not (tmp_path / "w.pth.part").exists() and not (tmp_path / "w.pth").exists()


def test_a_second_download_of_the_same_file_waits_for_the_first(server, tmp_path: Path, caplog) -> None:
    """Two processes (here threads, which flock keeps apart as well) downloading one file appended to one .part:
    the cache got a corrupt file, and the second failed with a traceback."""
    from fcnseg import transfer

    dest, url = tmp_path / "w.pth", f"{server.url}/weights.pth"
    part = dest.with_name("w.pth.part")
    result: list[Path] = []
    with transfer._turn(part, url):  # the first download, mid-transfer
        second = threading.Thread(target=lambda: result.append(download_file(url, dest, progress=False)))
        second.start()
        second.join(0.5)
        assert second.is_alive() and not result  # waiting, not appending
        part.write_bytes(PAYLOAD)
        os.replace(part, dest)  # the first finishes
    second.join(10)
    assert result == [dest] and dest.read_bytes() == PAYLOAD
    assert ranges(server) == [] and not part.exists()  # it found the file there: nothing fetched, nothing left
    assert "another process is downloading" in caplog.text


def test_urls_ending_in_the_same_name_are_not_taken_for_each_other(
    http_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    server = http_server()
    for version in ("v1", "v2"):
        (server.folder / version).mkdir()
        (server.folder / version / "fcn8s.pth").write_bytes(version.encode())
    first, second = (cached_download(f"{server.url}/{version}/fcn8s.pth") for version in ("v1", "v2"))
    assert first.read_bytes() == b"v1" and second.read_bytes() == b"v2"
    assert first.name == second.name == "fcn8s.pth" and first.parent.parent == second.parent.parent == cache_dir()


def test_cache_dir_honours_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert cache_dir() == tmp_path / "th" / "hub" / "checkpoints"


def test_cached_download_reuses_cache(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
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


def test_progress_only_on_a_terminal(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stderr", plain)
    download_file(f"{server.url}/weights.pth", tmp_path / "a.pth", progress=True)
    assert plain.getvalue() == ""
    tty = _FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    download_file(f"{server.url}/weights.pth", tmp_path / "b.pth", progress=True)
    # A tqdm bar named after the file: bytes of the total (100 KiB), with a rate.
    assert "b.pth:" in tty.getvalue() and f"/{len(PAYLOAD) // 1024}k" in tty.getvalue() and "B/s" in tty.getvalue()
    from fcnseg.progress import set_quiet

    set_quiet(True)
    try:
        quiet = _FakeTTY()
        monkeypatch.setattr(sys, "stderr", quiet)
        download_file(f"{server.url}/weights.pth", tmp_path / "c.pth", progress=True)
        assert quiet.getvalue() == ""
    finally:
        set_quiet(False)


def test_cli_download_names_the_known_datasets(tmp_path, capsys):
    refused(capsys, ["download", "imagenet", "--root", tmp_path], "imagenet", "voc2012", "camvid")
