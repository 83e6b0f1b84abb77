"""download_dataset: archives made here, served from 127.0.0.1, verified, safely extracted, idempotent."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import zipfile
from pathlib import Path

import pytest

from fcnseg.data.archives import ARCHIVES, download_dataset
from fcnseg.errors import DownloadError

FILES = {"images/0001.png": b"image bytes", "labels/0001.png": b"label bytes", "train.txt": b"0001\n"}


@pytest.fixture
def served(http_server):
    """A folder served over HTTP; yields (folder, base url, list of requested paths, stop())."""
    server = http_server()
    return server.folder, server.url, server.requests, server.stop


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _make_tar(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            _add(tar, name, data)
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_tar_gz_extracts_writes_marker_and_is_idempotent(served, tmp_path: Path) -> None:
    folder, url, paths, stop = served
    md5 = _make_tar(folder / "toy.tgz", {f"toyset/{k}": v for k, v in FILES.items()})
    table = {"toy": [{"url": f"{url}/toy.tgz", "file_name": "toy.tgz", "md5": md5, "folder": "toyset"}]}
    root = tmp_path / "root"

    result = download_dataset("toy", root, archives=table)

    assert result == root / "toyset"
    for name, data in FILES.items():
        assert (result / name).read_bytes() == data
    assert (root / "toy.tgz.extracted").is_file()
    assert [path for path, _ in paths] == ["/toy.tgz"]
    # Second call: no network (server stopped, archive even deleted), nothing re-extracted.
    stop()
    (root / "toy.tgz").unlink()
    (result / "train.txt").write_bytes(b"edited")
    assert download_dataset("toy", root, archives=table) == result
    assert (result / "train.txt").read_bytes() == b"edited"


def test_zip_with_subdir_is_moved_to_folder(served, tmp_path: Path) -> None:
    folder, url, _, _ = served
    archive = folder / "repo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("repo-abc/README.md", b"code, not data")
        zf.writestr("repo-abc/Data/", b"")
        for name, data in FILES.items():
            zf.writestr(f"repo-abc/Data/{name}", data)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    entry = {"url": f"{url}/repo.zip", "file_name": "repo.zip", "sha256": sha256, "folder": "Data",
             "subdir": "repo-abc/Data"}
    root = tmp_path / "root"

    result = download_dataset("toy", root, archives={"toy": [entry]})

    assert result == root / "Data"
    for name, data in FILES.items():
        assert (result / name).read_bytes() == data
    assert not (root / "repo-abc").exists()  # only the wanted folder was extracted
    assert (root / "repo.zip.extracted").is_file()


@pytest.mark.parametrize(
    "member", ["../evil", "toyset/../../evil", "/tmp/fcnseg-evil-abs"], ids=["dotdot", "nested", "absolute"]
)
def test_tar_path_traversal_is_refused(served, tmp_path: Path, member: str) -> None:
    folder, url, _, _ = served
    md5 = _make_tar(folder / "evil.tgz", {"toyset/ok.txt": b"ok", member: b"pwned"})
    table = {"evil": [{"url": f"{url}/evil.tgz", "file_name": "evil.tgz", "md5": md5, "folder": "toyset"}]}
    root = tmp_path / "root"

    with pytest.raises(DownloadError, match=re.escape(repr(member))) as info:
        download_dataset("evil", root, archives=table)
    assert str(info.value).startswith("refusing to extract")

    assert not (tmp_path / "evil").exists() and not Path("/tmp/fcnseg-evil-abs").exists()
    assert not (root / "toyset").exists()  # checked before anything was written
    assert not (root / "evil.tgz.extracted").exists()


def test_tar_symlink_out_of_tree_is_refused(served, tmp_path: Path) -> None:
    folder, url, _, _ = served
    archive = folder / "link.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("toyset/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    table = {"x": [{"url": f"{url}/link.tgz", "file_name": "link.tgz", "md5": md5, "folder": "toyset"}]}
    with pytest.raises(DownloadError, match="links outside"):
        download_dataset("x", tmp_path / "root", archives=table)
    assert not (tmp_path / "root" / "toyset" / "passwd").exists()


def test_bad_checksum_extracts_nothing(served, tmp_path: Path) -> None:
    folder, url, _, _ = served
    _make_tar(folder / "toy.tgz", {"toyset/a.txt": b"a"})
    table = {"toy": [{"url": f"{url}/toy.tgz", "file_name": "toy.tgz", "md5": "0" * 32, "folder": "toyset"}]}
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_dataset("toy", tmp_path / "root", archives=table)
    assert not (tmp_path / "root" / "toyset").exists()


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="voc2012") as info:
        download_dataset("imagenet", tmp_path)
    assert "sbd" in str(info.value) and "camvid" in str(info.value)


def test_builtin_table_is_well_formed() -> None:
    assert {"voc2012", "sbd", "camvid"} <= set(ARCHIVES)
    for entries in ARCHIVES.values():
        for entry in entries:
            assert entry["url"].startswith(("http://", "https://"))
            assert entry["file_name"] and entry["folder"]
            assert re.fullmatch(r"[0-9a-f]{32}", entry.get("md5", "")) or re.fullmatch(
                r"[0-9a-f]{64}", entry.get("sha256", "")
            )
    assert ARCHIVES["voc2012"][0]["md5"] == "6cd6e144f989b92b3379bac3b3de84fd"
    assert ARCHIVES["sbd"][0]["md5"] == "82b4d87ceb2ed10f6038a1cba92111cb"
