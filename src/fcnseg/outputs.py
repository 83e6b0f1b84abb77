"""Output folders: nothing a user wrote is overwritten, and one run at a time per folder.

Every folder fcnseg writes into keeps a record, ``.fcnseg-outputs.json``, of the files a command wrote
there (name, command, size and modification time). A command may replace a file only when that record
says the same command wrote it and the file is unchanged since; any other existing file is the user's,
and the command refuses before writing anything unless ``--overwrite`` is given. Input files are never
outputs, ``--overwrite`` or not.

A run may be stopped between any two instructions (Ctrl+C, SIGTERM, kill -9, a full disk), and the record
is rewritten only now and then. So :meth:`Outputs.write` first claims each file in a journal next to the
record, ``.fcnseg-outputs.pending`` (one line appended: name, command, size and sha256 of the content about
to be written), and only then renames the file into place. Whenever the process dies, every file it made
is either recorded or claimed; a claim counts only while the file holds exactly the claimed content
(hashed when read), so a claim whose rename never happened, or a file the user changed since, is not
taken for fcnseg's. The next run folds the claims into the record and removes the journal.

:func:`folder_lock` holds a folder for one process at a time (``fcntl.flock``: the kernel lets go when
the process ends, however it ends, so a killed run's folder is free again at once); the lock file names
the holder's pid for the message the next process shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat as stat_mode
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from fcnseg.atomic import atomic_open, check_writable, make_folder, remove_temporaries
from fcnseg.errors import ConfigError, WriteError, listing

RECORD = ".fcnseg-outputs.json"
JOURNAL = ".fcnseg-outputs.pending"
LOCK = ".fcnseg.lock"
_FLUSH_SECONDS = 1.0
_SHOWN = 8


class Outputs:
    """The files one command writes into one folder, checked against and added to the folder's record."""

    def __init__(self, folder: str | os.PathLike, command: str, overwrite: bool = False) -> None:
        self.folder, self.command, self.overwrite = Path(folder), command, overwrite
        self._pending: dict[str, dict] = {}
        self._flushed = time.monotonic()
        self._claimed = False  # whether this object appended to the journal (and so may remove it)

    def _name(self, path: str | os.PathLike) -> str:
        # The folder resolved, not the file: a symbolic link in the folder is a file there, wherever it leads.
        path = Path(path)
        return str((_real(path.parent) / path.name).relative_to(_real(self.folder)))

    def _entries(self, known: Iterable[str] = ()) -> dict[str, dict]:
        """The record, with the journal's claims that the files bear out (those in ``known`` are not hashed)."""
        try:
            data = json.loads((self.folder / RECORD).read_text())
            entries = data["files"] if isinstance(data.get("files"), dict) else {}
        except (OSError, ValueError, AttributeError):
            entries = {}
        return {**entries, **self._confirmed_claims(set(known))}

    def _claims(self) -> list[dict]:
        try:
            lines = (self.folder / JOURNAL).read_bytes().splitlines()
        except OSError:
            return []
        claims = []
        for line in lines:
            try:
                claim = json.loads(line)
            except ValueError:  # a line torn by a full disk: its file was never renamed into place
                continue
            if isinstance(claim, dict) and {"name", "command", "size", "sha256"} <= claim.keys():
                claims.append(claim)
        return claims

    def _confirmed_claims(self, known: set[str]) -> dict[str, dict]:
        """Record entries for the claimed files that hold the claimed content now."""
        confirmed = {}
        for claim in self._claims():
            if claim["name"] in known:
                continue
            path = self.folder / claim["name"]
            try:
                found = path.lstat()
            except OSError:
                continue
            if (stat_mode.S_ISREG(found.st_mode) and found.st_size == claim["size"]
                    and _sha256(path) == claim["sha256"]):
                confirmed[claim["name"]] = {"command": claim["command"], "size": found.st_size,
                                            "mtime_ns": found.st_mtime_ns}
        return confirmed

    def owned(self, path: str | os.PathLike, entries: dict[str, dict] | None = None) -> bool:
        """Whether ``path`` is as this command wrote it (recorded, same size and modification time), or lies
        in a folder recorded as this command's."""
        entries = self._entries() if entries is None else entries
        name = self._name(path)
        folders = [entries.get(str(parent)) for parent in Path(name).parents if str(parent) != "."]
        if any(e and e.get("folder") and e.get("command") == self.command for e in folders):
            return True
        entry = entries.get(name)
        try:
            stat = Path(path).stat()
        except OSError:
            return False
        if entry is None or entry.get("command") != self.command:
            return False
        # Logs that keep growing are recorded without a size: they are this command's whatever they hold now.
        return entry.get("size") is None or (entry["size"], entry.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns)

    def claim(self, paths: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()) -> None:
        """Refuse, before anything is written, outputs that are inputs or existing files of the user's, and a
        folder that cannot be written; nothing is created."""
        check_writable(self.folder)
        paths = [Path(p) for p in paths]
        sources = {_real(p) for p in inputs}
        clash = [p for p in paths if _real(p) in sources]
        if clash:
            raise ConfigError(f"fcnseg {self.command} would write over its own input {clash[0]}: choose another "
                              "--out (inputs are never overwritten, even with --overwrite)")
        if self.overwrite:
            return
        entries = self._entries()
        foreign = [p for p in paths if os.path.lexists(p) and not self.owned(p, entries)]
        if foreign:
            raise ConfigError(f"{listing(foreign, _SHOWN)} already exist{'s' if len(foreign) == 1 else ''} and "
                              f"{'was' if len(foreign) == 1 else 'were'} not written by an earlier fcnseg "
                              f"{self.command}: choose another --out, or pass --overwrite to replace "
                              f"{'it' if len(foreign) == 1 else 'them'}")

    def record(self, paths: Iterable[str | os.PathLike], growing: bool = False, flush: bool = False) -> None:
        """Note files this command has just written (the record is saved at most once a second, and by
        :meth:`flush`). ``growing`` files (logs appended to) are recorded by name only, and may be recorded
        before they are made, so that a run killed at any moment leaves nothing unaccounted for."""
        for path in paths:
            if growing:
                self._pending[self._name(path)] = {"command": self.command, "size": None, "mtime_ns": None}
                continue
            stat = Path(path).stat()
            self._pending[self._name(path)] = {"command": self.command, "size": stat.st_size,
                                               "mtime_ns": stat.st_mtime_ns}
        if flush or time.monotonic() - self._flushed > _FLUSH_SECONDS:
            self.flush()

    def write(self, path: str | os.PathLike, data: bytes) -> Path:
        """Write ``data`` to ``path`` atomically, claimed in the journal before it lands, then recorded.

        Why claim first: a record saved after the rename would miss the file when the process dies between the
        two (kill -9, SIGTERM, a full disk), and the next run would take fcnseg's own file for the user's. The
        claim is one ``write`` to a file opened for appending: once it returns, the kernel has the line even if
        the process is killed the next instant. (It is not synced to the disk: after a power cut a lost claim
        makes the next run refuse a file it wrote, asking for --overwrite; it never makes fcnseg replace a
        user's file.)
        """
        path = Path(path)
        self._claim({"name": self._name(path), "command": self.command, "size": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
        with atomic_open(path) as handle:
            handle.write(data)
        self.record([path])
        return path

    def _claim(self, claim: dict) -> None:
        journal = self.folder / JOURNAL
        # A newline before the claim too: a line torn by a full disk cannot swallow the next one.
        line = ("\n" + json.dumps(claim, sort_keys=True) + "\n").encode()
        try:
            make_folder(self.folder)
            descriptor = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                written = os.write(descriptor, line)
            finally:
                os.close(descriptor)
        except OSError as error:
            raise WriteError(f"cannot write {journal}: {error.strerror or error}") from None
        if written != len(line):
            raise WriteError(f"cannot write {journal}: only part of a line was written (is the disk full?)")
        self._claimed = True

    def record_folder(self, folder: str | os.PathLike) -> None:
        """Note that everything below ``folder`` is this command's (a log folder a library writes into)."""
        self._pending[self._name(folder)] = {"command": self.command, "folder": True}
        self.flush()

    def flush(self) -> None:
        """Merge what was recorded, and the journal's claims the files bear out, into the folder's record file
        (atomically); then remove the journal if this object wrote to it (no other run writes it meanwhile:
        the commands that write claims hold the folder's lock)."""
        journal = self.folder / JOURNAL
        if not self._pending and not (self._claimed and journal.exists()):
            return
        entries = {**self._entries(known=self._pending), **self._pending}
        with atomic_open(self.folder / RECORD, "w", encoding="utf-8") as handle:
            json.dump({"files": entries}, handle, indent=1, sort_keys=True)
        if self._claimed:  # every claim in it is in the record now, or its file never landed
            journal.unlink(missing_ok=True)
        self._pending.clear()
        self._flushed = time.monotonic()

    def _files(self) -> list[Path]:
        return [p for p in sorted(self.folder.rglob("*")) if p.is_file() and p.name not in (RECORD, LOCK, JOURNAL)]

    def foreign(self) -> list[Path]:
        """Files in the folder (and below) that this command did not write, or that changed since."""
        entries = self._entries()
        return [p for p in self._files() if not self.owned(p, entries)]

    def clear(self) -> None:
        """Delete every file this command wrote here; refuse (deleting nothing) if anything else is here."""
        foreign = self.foreign()
        if foreign:
            raise ConfigError(f"{self.folder} holds files fcnseg {self.command} did not write "
                              f"({listing(foreign, _SHOWN)}): move them, or choose another --out")
        for path in self._files():
            path.unlink()
        for folder in sorted((p for p in self.folder.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        (self.folder / RECORD).unlink(missing_ok=True)
        (self.folder / JOURNAL).unlink(missing_ok=True)


def _real(path: str | os.PathLike) -> Path:
    """``path`` with symbolic links resolved, as far as they lead (``Path.resolve`` raises on a loop)."""
    return Path(os.path.realpath(path))


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def output_file(path: str | os.PathLike, command: str, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Outputs:
    """The :class:`Outputs` of a single-file output (``--out FILE``), already claimed."""
    path = Path(path)
    outputs = Outputs(path.parent, command, overwrite)
    outputs.claim([path], inputs)
    return outputs


def refuse_if_held(folder: str | os.PathLike) -> None:
    """Refuse, changing nothing, when another process holds ``folder`` (see :func:`folder_lock`)."""
    import fcntl

    path = Path(folder) / LOCK
    if not path.is_file():
        return
    with open(path) as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{folder} is in use by {handle.read().strip() or 'another process'}: wait for it "
                              "to finish, or choose another --out") from None


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str, stale: Iterable[str] = (),
                option: str = "--out") -> Iterator[None]:
    """Hold ``folder`` for this process; another process gets a one-line refusal naming the holder's pid
    (and ``option``, the command's flag that names the folder).

    On taking the lock, temporary files that atomic writes of the names in ``stale`` left behind (a run
    killed mid-write) are removed: no live writer can own them any more.
    """
    import fcntl  # POSIX only, like the rest of the run-folder handling

    folder = make_folder(folder)
    handle = open(folder / LOCK, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise ConfigError(f"{folder} is in use by {holder}: wait for it to finish, or choose another "
                              f"{option}") from None
        handle.seek(0)
        handle.truncate()
        try:
            handle.write(f"{what} (pid {os.getpid()})\n")
            handle.flush()
        except OSError as error:  # a full disk
            raise WriteError(f"cannot write {folder / LOCK}: {error.strerror or error}") from None
        remove_temporaries(folder, stale)
        yield
    finally:
        with suppress(OSError):  # the unwritten pid of a full disk: the file is closed all the same
            handle.close()  # closing releases the lock; the file stays (unlinking it could let two hold it)

