"""Hostile use of ``fcnseg download`` and ``fcnseg convert``: an archive never replaces a file of the user's,
an interrupted or killed extraction leaves no half files, two downloads into one root do not mix, and convert
names what it was given (an fcnseg checkpoint, a URL it cannot fetch, a folder, an empty or text file)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import torch

from fcnseg.cli import main
from fcnseg.data.archives import ARCHIVES
from fcnseg.models.zoo import CAFFE_NETS
from fcnseg.outputs import LOCK, folder_lock

from .helpers import digests, random_fcn, refused

ARCHIVE_FILES = {"mydata/labels.txt": b"road\ncar\nsky\n", "mydata/images/0.png": b"png bytes " * 50,
                 "mydata/train.txt": b"0\n"}
USER_LABELS = b"road\ncar\nsky\nbicycle (added by hand)\n"


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    """A .zip (stored, so that its bytes can be damaged on purpose) or a .tar.gz of ``files``."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def publish(http_server, monkeypatch):
    """``publish(kind, files)``: serve an archive of ``files`` ("zip" or "tar") as the dataset "toy" of
    ``fcnseg download``; returns the archive's file name."""
    server = http_server()

    def publish_archive(kind: str, files: dict[str, bytes] = ARCHIVE_FILES, damage: bytes | None = None) -> str:
        name = "toy.zip" if kind == "zip" else "toy.tgz"
        archive = write_archive(server.folder / name, files)
        if damage is not None:  # one member's bytes changed after the fact: its CRC no longer matches
            archive.write_bytes(archive.read_bytes().replace(damage, damage[::-1], 1))
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        entry = {"url": f"{server.url}/{name}", "file_name": name, "md5": md5, "folder": "mydata"}
        monkeypatch.setitem(ARCHIVES, "toy", [entry])
        return name

    return publish_archive


def users_root(root: Path, labels: bytes = USER_LABELS) -> Path:
    """A dataset root where the user edited mydata/labels.txt and keeps a file of their own."""
    (root / "mydata").mkdir(parents=True)
    (root / "mydata" / "labels.txt").write_bytes(labels)
    (root / "mydata" / "notes.txt").write_bytes(b"my notes")
    return root


def leftovers(root: Path, archive: str) -> set[str]:
    """What is in ``root`` besides the dataset folder, the archive, its marker and the lock file: what an
    extraction left behind (a temporary folder, a half file)."""
    return set(os.listdir(root)) - {"mydata", archive, f"{archive}.extracted", LOCK}


# --- 3. extraction never replaces a file it did not write ----------------------------------------------------


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_archive_does_not_overwrite_a_users_edited_file(publish, tmp_path, capsys, kind):
    archive = publish(kind)
    root = users_root(tmp_path / "root")
    before = digests(root / "mydata")
    line = refused(capsys, ["download", "toy", "--root", root, "--quiet"], root / "mydata" / "labels.txt",
                   "--overwrite")
    assert "mydata/images" not in line  # a new file is not a clash
    assert digests(root / "mydata") == before  # refused before anything was moved in: no new file either
    assert leftovers(root, archive) == set() and not (root / f"{archive}.extracted").exists()
    # Asked again, the same answer: nothing half done is taken for done.
    refused(capsys, ["download", "toy", "--root", root, "--quiet"], root / "mydata" / "labels.txt")
    assert digests(root / "mydata") == before


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_overwrite_replaces_the_differing_file_and_keeps_the_users_others(publish, tmp_path, kind):
    archive = publish(kind)
    root = users_root(tmp_path / "root")
    notes = digests(root / "mydata")["notes.txt"]
    assert main(["download", "toy", "--root", str(root), "--overwrite", "--quiet"]) == 0
    after = digests(root / "mydata")
    assert after["notes.txt"] == notes
    for name, data in ARCHIVE_FILES.items():
        assert (root / name).read_bytes() == data
    assert set(after) == {"notes.txt", "labels.txt", "images/0.png", "train.txt"}
    assert leftovers(root, archive) == set() and (root / f"{archive}.extracted").is_file()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_existing_file_with_the_archives_bytes_is_left_as_it_is(publish, tmp_path, kind):
    archive = publish(kind)
    root = users_root(tmp_path / "root", labels=ARCHIVE_FILES["mydata/labels.txt"])
    labels = root / "mydata" / "labels.txt"
    os.utime(labels, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    stat = labels.stat()
    assert main(["download", "toy", "--root", str(root), "--quiet"]) == 0
    assert (labels.stat().st_ino, labels.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)  # not rewritten
    assert all((root / name).read_bytes() == data for name, data in ARCHIVE_FILES.items())
    assert leftovers(root, archive) == set()


def test_a_damaged_member_leaves_no_file_in_the_root(publish, tmp_path, capsys):
    # The zip's second member is damaged: its CRC fails only once all of it has been read (and written).
    archive = publish("zip", damage=ARCHIVE_FILES["mydata/images/0.png"])
    root = tmp_path / "root"
    refused(capsys, ["download", "toy", "--root", root, "--quiet"], root / archive, "damaged")
    assert not (root / "mydata").exists()
    assert leftovers(root, archive) == set()


@pytest.mark.parametrize("flag", ["encrypted", "deflate64"])
def test_a_zip_python_cannot_unpack_is_one_line(publish, tmp_path, capsys, flag):
    """An encrypted member (a RuntimeError from zipfile) or Deflate64 (NotImplementedError) was a traceback."""
    archive = publish("zip")
    entry = ARCHIVES["toy"][0]
    path = Path(urllib.parse.urlparse(entry["url"]).path).name
    served = next(folder for folder in tmp_path.iterdir() if (folder / path).is_file()) / path
    data = bytearray(served.read_bytes())
    for header, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # each record of the first member
        at = data.find(header)
        if flag == "encrypted":
            data[at + offset] |= 1  # general purpose flag, bit 0: encrypted
        else:
            data[at + offset + 2:at + offset + 4] = (9).to_bytes(2, "little")  # compression method 9
    served.write_bytes(bytes(data))
    entry["md5"] = hashlib.md5(bytes(data)).hexdigest()
    root = tmp_path / "root"
    refused(capsys, ["download", "toy", "--root", root, "--quiet"], root / archive, "cannot unpack",
            "another tool")
    assert not (root / "mydata").exists() and leftovers(root, archive) == set()


def dying_copies(die):
    """Replacements for the copy functions zipfile / tarfile extraction writes with: the second file copied
    gets three bytes, then ``die()``."""
    copied = []

    def wrap(real):
        def copy(source, target, *args, **kwargs):
            copied.append(target)
            if len(copied) == 2:
                target.write(source.read(3))
                target.flush()
                die()
            return real(source, target, *args, **kwargs)
        return copy

    return wrap(shutil.copyfileobj), wrap(tarfile.copyfileobj)


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_an_interrupted_extraction_leaves_no_half_file(publish, tmp_path, capsys, monkeypatch, kind):
    archive = publish(kind)
    root = users_root(tmp_path / "root", labels=ARCHIVE_FILES["mydata/labels.txt"])
    before = digests(root / "mydata")

    def interrupt():
        raise KeyboardInterrupt

    plain, tar = dying_copies(interrupt)
    monkeypatch.setattr(shutil, "copyfileobj", plain)
    monkeypatch.setattr(tarfile, "copyfileobj", tar)
    assert main(["download", "toy", "--root", str(root), "--quiet"]) == 130
    assert digests(root / "mydata") == before  # no file of the archive's, whole or half
    assert leftovers(root, archive) == set()  # the temporary folder went on the way out
    monkeypatch.undo()


# fcnseg download of the dataset sys.argv[1] (an ARCHIVES entry as JSON) into sys.argv[2], killed with SIGKILL
# three bytes into the second file tarfile writes.
KILLED_DOWNLOAD = """
import json, os, signal, sys, tarfile
from fcnseg.cli import main
from fcnseg.data.archives import ARCHIVES
from fcnseg.models.zoo import CAFFE_NETS
ARCHIVES["toy"] = [json.loads(sys.argv[1])]
real, copied = tarfile.copyfileobj, []
def dying(source, target, *args, **kwargs):
    copied.append(target)
    if len(copied) == 2:
        target.write(source.read(3))
        target.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, target, *args, **kwargs)
tarfile.copyfileobj = dying
main(["download", "toy", "--root", sys.argv[2], "--quiet"])
"""


@pytest.mark.slow  # a second Python that imports torch: a few seconds
def test_kill_9_mid_extraction_leaves_no_half_file_and_the_next_run_finishes(publish, tmp_path):
    archive = publish("tar")
    root = tmp_path / "root"
    entry = json.dumps(ARCHIVES["toy"][0])
    run = subprocess.run([sys.executable, "-c", KILLED_DOWNLOAD, entry, str(root)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert run.returncode == -9, run.stderr.decode()
    files = digests(root / "mydata") if (root / "mydata").exists() else {}
    assert all(hashlib.sha256(ARCHIVE_FILES[f"mydata/{name}"]).hexdigest() == digest
               for name, digest in files.items()), files  # whole files of the archive's, or none
    assert main(["download", "toy", "--root", str(root), "--quiet"]) == 0
    assert all((root / name).read_bytes() == data for name, data in ARCHIVE_FILES.items())
    assert leftovers(root, archive) == set()  # what the killed run left was cleaned up


def test_a_second_download_into_a_root_in_use_is_refused(publish, http_server, tmp_path, capsys, monkeypatch):
    publish("zip")
    net = http_server()
    (net.folder / "fcn8s-heavy-pascal.caffemodel").write_bytes(b"weights")
    monkeypatch.setitem(CAFFE_NETS["voc-fcn8s"], "url", f"{net.url}/fcn8s-heavy-pascal.caffemodel")
    root = tmp_path / "root"
    with folder_lock(root, "fcnseg download"):
        # Two at once would append to the same .part file (and unpack over each other).
        for name in ("toy", "voc-fcn8s"):
            refused(capsys, ["download", name, "--root", root, "--quiet"], root, "in use", "--root")
        assert os.listdir(root) == [LOCK]  # the refused downloads wrote nothing
    assert not root.exists()  # and the lock's holder, which made the root and wrote nothing, removed it


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/fcnseg-hostile-evil.txt"], ids=["dotdot", "absolute"])
def test_path_traversal_is_still_refused_before_anything_is_written(publish, tmp_path, capsys, member):
    archive = publish("zip", {**ARCHIVE_FILES, member: b"pwned"})
    root = users_root(tmp_path / "root")
    before = digests(root / "mydata")
    refused(capsys, ["download", "toy", "--root", root, "--quiet"], root / archive, repr(member))
    assert digests(root / "mydata") == before
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/fcnseg-hostile-evil.txt").exists()
    assert leftovers(root, archive) == set()


# --- 8. convert names what it was given ----------------------------------------------------------------------


@pytest.mark.parametrize("options", [[], ["--name", "fcn8s"], ["--name", "fcn8s_atonce"], ["--model", "voc-fcn8s"]],
                         ids=["plain", "name", "atonce", "caffe"])
def test_convert_of_an_fcnseg_checkpoint_says_to_use_it_directly(tiny_checkpoint, tmp_path, capsys, options):
    before = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    out = tmp_path / "out.pth"
    line = refused(capsys, ["convert", tiny_checkpoint, *options, "--out", out], tiny_checkpoint,
                   "already an fcnseg checkpoint", "predict")
    assert "FCN8sAtOnce" not in line
    assert hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest() == before and not out.exists()


def test_convert_of_a_bare_fcnseg_state_dict_with_a_name_is_one_line(tmp_path, capsys):
    state = tmp_path / "fcn8s_state.pth"
    torch.save(random_fcn().state_dict(), state)
    refused(capsys, ["convert", state, "--name", "fcn8s", "--out", tmp_path / "out.pth"], state, "conv1_1")


@pytest.mark.parametrize("source", ["file:///etc/passwd", "ftp://example.com/fcn8s.pth", "s3://bucket/fcn8s.pth"])
@pytest.mark.parametrize("options", [[], ["--model", "voc-fcn8s"]], ids=["pytorch-fcn", "caffe"])
def test_convert_names_the_url_schemes_it_supports(tmp_path, capsys, source, options):
    refused(capsys, ["convert", source, *options, "--out", tmp_path / "out.pth"], source, "http://", "https://")
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("options", [[], ["--model", "voc-fcn8s"]], ids=["pytorch-fcn", "caffe"])
@pytest.mark.parametrize("kind", ["folder", "empty", "text"])
def test_convert_of_an_odd_local_source_is_one_line_naming_it(tmp_path, capsys, options, kind):
    source = tmp_path / ("weights.caffemodel" if options else "weights.pth")
    said = {"folder": "folder", "empty": "empty", "text": "not"}[kind]
    if kind == "folder":
        source.mkdir()
    else:
        source.write_bytes(b"" if kind == "empty" else b"these are my notes, not weights\n")
    before = digests(tmp_path)
    refused(capsys, ["convert", source, *options, "--out", tmp_path / "out.pth"], source, said)
    assert digests(tmp_path) == before


@pytest.mark.parametrize("options", [[], ["--model", "voc-fcn8s"]], ids=["pytorch-fcn", "caffe"])
def test_convert_of_a_damaged_download_says_to_delete_the_cached_copy(http_server, tmp_path, capsys, monkeypatch,
                                                                      options):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    server = http_server()
    name = "net.caffemodel" if options else "net.pth"
    (server.folder / name).write_bytes(b"these are not weights\n")
    refused(capsys, ["convert", f"{server.url}/{name}", *options, "--out", tmp_path / "out.pth"],
            str(tmp_path / "th"), f"downloaded from {server.url}/{name}", "delete it")


@pytest.mark.parametrize("damage, names", [
    ("nan", ("holds NaN or infinite values", "nothing was written")),  # written without a word, refused by export
    ("classes", ("scores 5 classes, not voc's 21", "fcn_from_pytorch_fcn", "DatasetInfo")),  # named neither
])
def test_convert_of_a_pytorch_fcn_net_no_command_could_use_is_one_line(tmp_path, capsys, damage, names):
    from .models.torchfcn_oracle import TorchFCN

    net = TorchFCN("8s", n_class=5 if damage == "classes" else 21, width=1 / 16)
    state = net.state_dict()
    if damage == "nan":
        state["conv1_1.weight"][0, 0, 0, 0] = float("nan")
    source = tmp_path / "fcn8s_net.pth"
    torch.save(state, source)
    refused(capsys, ["convert", source, "--out", tmp_path / "out.pth"], source, *names)
    assert not (tmp_path / "out.pth").exists()


def test_a_full_disk_at_the_marker_is_one_line_and_the_next_run_finishes(publish, tmp_path, capsys, monkeypatch):
    archive = publish("zip")
    root = tmp_path / "root"
    real_replace = os.replace

    def full_disk_at_the_marker(source, target, *args, **kwargs):
        if str(target).endswith(".extracted"):
            raise OSError(28, "No space left on device")
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk_at_the_marker)
    refused(capsys, ["download", "toy", "--root", root, "--quiet"], f"{archive}.extracted", "No space left")
    assert not (root / f"{archive}.extracted").exists() and leftovers(root, archive) == set()
    monkeypatch.setattr(os, "replace", real_replace)
    assert main(["download", "toy", "--root", str(root), "--quiet"]) == 0
    assert (root / f"{archive}.extracted").read_text().startswith("http://127.0.0.1")


def test_a_dataset_folder_on_another_file_system_is_filled_by_copies_that_land_whole(publish, tmp_path,
                                                                                      monkeypatch):
    # root/mydata a link to another disk: renaming out of the staging folder fails with EXDEV, and each file
    # is then copied beside its target and renamed there (never a half file under its real name).
    import errno

    import fcnseg.data.archives as archives

    archive = publish("zip")
    root = users_root(tmp_path / "root")
    rename, refused_renames = os.replace, []

    def across_devices(source, target):
        staged = any(folder.name.startswith(f"{archives.STAGING}{archive}.") for folder in Path(source).parents)
        if staged:
            refused_renames.append(Path(target).name)  # out of the staging folder: another file system
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return rename(source, target)

    monkeypatch.setattr(archives.os, "replace", across_devices)
    assert main(["download", "toy", "--root", str(root), "--overwrite", "--quiet"]) == 0
    assert refused_renames  # the copying path ran
    assert all((root / name).read_bytes() == data for name, data in ARCHIVE_FILES.items())
    assert (root / "mydata" / "notes.txt").read_bytes() == b"my notes"
    assert leftovers(root, archive) == set()  # the staging folder and every side copy's folder are gone


def test_the_copy_folder_a_killed_run_left_beside_a_file_goes_with_the_next_run(publish, tmp_path):
    """Killed mid-copy onto another file system, a run left its partial copy folder in the dataset's own folder
    (284 MB inside a linked mydata); the next run cleaned only the root's."""
    from fcnseg.data.archives import STAGING

    publish("tar")
    root = users_root(tmp_path / "root")
    abandoned = root / "mydata" / f"{STAGING}x1y2z3" / "images"
    abandoned.mkdir(parents=True)
    (abandoned / "0.png").write_bytes(b"png b")  # a half copy
    mine = root / "mydata" / ".my-hidden-notes"
    mine.mkdir()
    assert main(["download", "toy", "--root", str(root), "--overwrite", "--quiet"]) == 0
    assert not abandoned.parent.exists()
    assert mine.is_dir() and (root / "mydata" / "notes.txt").read_bytes() == b"my notes"
    assert all((root / name).read_bytes() == data for name, data in ARCHIVE_FILES.items())
