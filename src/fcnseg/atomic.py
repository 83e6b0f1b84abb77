"""Atomic file writes: nothing a user wrote is replaced by half a file if a run dies mid-write."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from fcnseg.errors import FcnsegError, WriteError

try:
    import fcntl
except ImportError:  # Windows: temporary files are not locked, and none is ever taken for abandoned
    fcntl = None

# Destination -> what to do with a finished temporary file just before it is renamed onto it (see before_landing).
_LANDING: ContextVar[dict[str, Callable[[Path, Path], None]] | None] = ContextVar("fcnseg_landing", default=None)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; if the block succeeds it is synced and renamed over
    ``path`` (creating parent folders), otherwise it is deleted and ``path`` is left as it was.

    The temporary file is locked (``flock``) until then: the kernel lets the lock go when the process ends,
    however it ends, so :func:`remove_abandoned_temporaries` can tell a killed writer's file from a live one's."""
    path = Path(path)
    try:
        make_folder(path.parent)
        fd, name = tempfile.mkstemp(prefix=f".{_kept_part(path.name)}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        _try_lock(fd)  # just made: nothing else holds it (where locks cannot be taken, it goes on unlocked)
        with _landed_or_removed(path, Path(name)) as tmp:
            yield tmp
    finally:
        os.close(fd)  # the lock goes with it, after the rename


@contextmanager
def _landed_or_removed(path: Path, tmp: Path) -> Iterator[Path]:
    """The body of :func:`atomic_path`: ``tmp`` synced and renamed over ``path`` after the block, or removed."""
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the mode open() would
        landing = (_LANDING.get() or {}).get(destinations([path])[0])
        if landing is not None:
            landing(path, tmp)
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a quota: the old file stays as it was
        tmp.unlink(missing_ok=True)
        if isinstance(error, WriteError):
            raise
        raise WriteError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = _failed_write(error)
        if cause is not None:  # e.g. torch.save's "unexpected pos" RuntimeError after the disk filled up
            raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from None
        # Ctrl+C or SIGTERM mid-write, which the writer's clean-up then reported as its own failure (torch.save:
        # "unexpected pos"): a stop, not a bug
        if isinstance(error, Exception):
            interrupt = _in_chain(error, lambda chained: isinstance(chained, KeyboardInterrupt))
            if interrupt is not None:
                raise interrupt from None
        raise


def same_file(descriptor: int, path: str | os.PathLike) -> bool:
    """Whether the open file ``descriptor`` is the file at ``path`` now (not renamed away, removed or replaced)."""
    try:
        found, held = os.stat(path), os.fstat(descriptor)
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (held.st_dev, held.st_ino)


def _try_lock(fd: int) -> bool | None:
    """Take an exclusive ``flock`` on ``fd`` without waiting: True if taken, False if another process holds it,
    None where it cannot be told (no ``fcntl`` on Windows, a file system without ``flock``)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


@contextmanager
def before_landing(paths: Iterable[str | os.PathLike], callback: Callable[[Path, Path], None]) -> Iterator[None]:
    """Within the block (in this thread), :func:`atomic_path` calls ``callback(path, tmp)`` when a finished,
    synced temporary file ``tmp`` is about to be renamed onto one of ``paths``, whoever writes it (a checkpoint
    writer, an exporter): the last moment at which its content can be noted down before it is there to be seen.
    An error from ``callback`` leaves ``path`` as it was."""
    paths = [Path(path) for path in paths]
    token = _LANDING.set({**(_LANDING.get() or {}), **dict.fromkeys(destinations(paths), callback)})
    try:
        yield
    finally:
        _LANDING.reset(token)


def destinations(paths: Iterable[Path]) -> list[str]:
    """One spelling of each destination in ``paths``: its folder with links resolved (the file itself may not exist
    yet), each folder resolved once (a prediction lands thousands of files in one folder)."""
    parents: dict[Path, str] = {}
    spelled = []
    for path in paths:
        if path.parent not in parents:
            parents[path.parent] = os.path.realpath(path.parent)
        spelled.append(os.path.join(parents[path.parent], path.name))
    return spelled


def _failed_write(error: BaseException) -> OSError | None:
    """The OSError (a full disk, a quota, an I/O error) that ``error`` was raised in the wake of, if any: writers
    such as torch.save report a failed write as their own RuntimeError with the OSError chained inside."""
    if not isinstance(error, Exception) or isinstance(error, FcnsegError):  # Ctrl-C; a message for people already
        return None
    return _in_chain(error, lambda chained: isinstance(chained, OSError) and chained.errno is not None)


def _in_chain(error: BaseException, wanted: Callable[[BaseException], bool]) -> BaseException | None:
    """The first exception that ``error`` was raised in the wake of (its cause or context, theirs, ...) that is
    ``wanted``, if any."""
    chained, seen = error.__cause__ or error.__context__, set()
    while chained is not None and id(chained) not in seen:
        if wanted(chained):
            return chained
        seen.add(id(chained))
        chained = chained.__cause__ or chained.__context__
    return None


def check_writable(folder: str | os.PathLike) -> Path:
    """A WriteError, not a traceback, when files cannot be written into ``folder`` (creating nothing: a
    folder that does not exist yet is judged by its nearest existing parent)."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise WriteError(f"cannot write into {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write into {folder}: {_why_not_writable(existing)}")
    return folder


def _why_not_writable(folder: Path) -> str:
    """Why ``folder`` refuses writes: a read-only file system (a read-only mount: no permission helps), or
    permissions."""
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        read_only = False
    return f"{folder} is on a read-only file system" if read_only else f"permission denied on {folder}"


def make_folder(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and its parents) if needed; a WriteError, not a traceback, when that is impossible."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"cannot write into {folder}: it is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WriteError(f"cannot create the folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write into {folder}: {_why_not_writable(folder)}")
    return folder


# A temporary file's name is ".NAME.RANDOM.tmp": 14 characters more than NAME. File systems allow 255 bytes, so a
# legal name of 242 or more ("File name too long" for a 245-character mask name) keeps only its first part there.
_NAME_ROOM = 255 - len("..12345678.tmp")


def _kept_part(name: str) -> str:
    """The part of ``name`` a temporary file's name holds: all of it, or as many first bytes as fit (whole
    characters)."""
    encoded = name.encode(errors="surrogateescape")
    if len(encoded) <= _NAME_ROOM:
        return name
    return encoded[:_NAME_ROOM].decode(errors="ignore")


def _temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """The temporary files of :func:`atomic_path` in ``folder`` for the files ``names``, in one pass over the
    folder (a prediction may name thousands of files): ``.NAME.RANDOM.tmp``, where mkstemp's RANDOM holds no dot."""
    names = {_kept_part(name) for name in names}
    return [tmp for tmp in Path(folder).glob(".*.tmp") if tmp.name[1:-len(".tmp")].rpartition(".")[0] in names]


def remove_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``folder`` for the files ``names`` when a
    process was killed mid-write; call it only where no other process can be writing them."""
    removed = _temporaries(folder, names)
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def remove_abandoned_temporaries(folder: str | os.PathLike, names: Iterable[str],
                                 older_than_s: float = 10.0) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` for the files ``names``, where no process
    holds them: safe while other processes write the same names (two exports of one ``--out``), as each writer
    locks its file (:func:`atomic_path`). Files younger than ``older_than_s`` are left: a writer locks its file a
    moment after making it."""
    removed = []
    for tmp in _abandoned(_temporaries(folder, names), older_than_s):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _abandoned(paths: Iterable[Path], older_than_s: float, flags: int = os.O_RDONLY) -> Iterator[Path]:
    """Those of ``paths`` older than ``older_than_s`` that no process holds (``flock``), each yielded while this
    process holds it, so that it can be removed before a writer could take it."""
    for path in paths:
        try:
            fd = os.open(path, flags)
        except OSError:  # gone meanwhile (its writer landed it), or not of the kind asked for
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime > older_than_s and _try_lock(fd) is True:  # None: cannot tell
                yield path
        finally:
            os.close(fd)


_TEMPDIR_SWAP = threading.Lock()


@contextmanager
def work_folder(parent: str | os.PathLike, prefix: str) -> Iterator[Path]:
    """A temporary folder ``PREFIX*`` in ``parent`` for a command's intermediate files, locked (``flock``) while
    it lives and removed after; Python's own temporary files of the block go there too (``tempfile.tempdir``:
    ONNX Runtime's quantiser writes its own), so blocks run one at a time in a process, and another thread's
    temporary files made meanwhile land there as well. What a killed command left is removed by the next one
    (:func:`remove_abandoned_work_folders`): a kill -9 left 17-19 MB a time in the user's folder, for good."""
    parent = Path(parent)
    with _TEMPDIR_SWAP:  # tempfile.tempdir is the process's: one block at a time, each putting back what it found
        folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        fd = os.open(folder, os.O_RDONLY)
        _try_lock(fd)
        before, tempfile.tempdir = tempfile.tempdir, str(folder)
        try:
            yield folder
        finally:
            tempfile.tempdir = before
            shutil.rmtree(folder, ignore_errors=True)
            os.close(fd)


def remove_abandoned_work_folders(parent: str | os.PathLike, prefix: str, older_than_s: float = 10.0) -> list[Path]:
    """Remove the :func:`work_folder` s ``PREFIX*`` in ``parent`` that no process holds, as
    :func:`remove_abandoned_temporaries` does for temporary files."""
    removed = []
    for folder in _abandoned(Path(parent).glob(f"{prefix}*"), older_than_s, os.O_RDONLY | os.O_DIRECTORY):
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """``open(path, mode)`` that only replaces ``path`` once the block has written everything."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle
