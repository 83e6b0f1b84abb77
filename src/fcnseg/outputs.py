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

One run may also be spread over several processes, each writing its own share of the outputs (a
:class:`Shard`: ``fcnseg predict --shard I/N``, or the ranks torchrun starts). :func:`shard_lock` lets the
shards of one run, and only those, into the folder together. No file is written by two of them: each shard
keeps a record and a journal of its own (``.fcnseg-outputs.I-of-N.json`` and ``.pending``), read with the
folder's record, and a process alone in the folder (the first shard of a run, or any other command) folds
them into the folder's record (:meth:`Outputs.settle`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat as stat_mode
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fcnseg.atomic import (
    atomic_open,
    before_landing,
    check_writable,
    destinations,
    make_folder,
    remove_abandoned_temporaries,
    remove_temporaries,
    same_file,
)
from fcnseg.errors import ConfigError, WriteError, listing
from fcnseg.transfer import file_digest

RECORD = ".fcnseg-outputs.json"
JOURNAL = ".fcnseg-outputs.pending"
LOCK = ".fcnseg.lock"
SHARDS_LOCK = ".fcnseg.shards.lock"  # which shards of the sharded run in the folder are running, and that run
_SHARD_FILE = re.compile(r"\.fcnseg-outputs\.\d+-of-\d+\.(json|pending)")  # a shard's record or journal
_FLUSH_SECONDS = 1.0
_SHOWN = 8
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (counted from 0) of a run spread over ``count`` processes: the items
    ``index, index + count, index + 2 * count, ...`` of a list that every process sorts the same way."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard {self.index}/{self.count}: a run has at least one shard (I/N with N >= 1)")
        if not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count} does not exist: shards are counted from 0, "
                              f"0/{self.count} to {self.count - 1}/{self.count}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items of ``items``: no two shards share one, and together they take every one."""
        return list(items[self.index::self.count])

    @property
    def record(self) -> str:
        return f".fcnseg-outputs.{self.index}-of-{self.count}.json"

    @property
    def journal(self) -> str:
        return f".fcnseg-outputs.{self.index}-of-{self.count}.pending"


class Outputs:
    """The files one command writes into one folder, checked against and added to the folder's record."""

    def __init__(self, folder: str | os.PathLike, command: str, overwrite: bool = False,
                 shard: Shard | None = None) -> None:
        self.folder, self.command, self.overwrite, self.shard = Path(folder), command, overwrite, shard
        # Where this object records and claims: the folder's record and journal, or its shard's own.
        self.record_file = self.folder / (RECORD if shard is None else shard.record)
        self.journal = self.folder / (JOURNAL if shard is None else shard.journal)
        self._pending: dict[str, dict] = {}
        self._flushed = time.monotonic()
        self._claimed = False  # whether this object appended to the journal (and so may remove it)
        # What each path claimed by claim() was then (None: absent), to find at landing one changed meanwhile;
        # by destination (:func:`fcnseg.atomic.destinations`).
        self._found_at_claim: dict[str, tuple[int, int, int] | None] = {}

    def _name(self, path: str | os.PathLike) -> str:
        # The folder resolved, not the file: a symbolic link in the folder is a file there, wherever it leads.
        path = Path(path)
        return str((_real(path.parent) / path.name).relative_to(_real(self.folder)))

    def _entries(self, known: Iterable[str] = (), own: bool = False) -> dict[str, dict]:
        """The records, with the journals' claims that the files bear out (those in ``known`` are not hashed):
        the folder's record and every shard's (a shard's entries are newer: any older ones were folded into the
        folder's record before its run began), or with ``own`` only this object's record and journal."""
        records = [self.record_file] if own else [self.folder / RECORD, *_shard_files(self.folder, ".json")]
        entries: dict[str, dict] = {}
        for record in records:
            try:
                data = json.loads(record.read_text())
                files = data["files"] if isinstance(data.get("files"), dict) else {}
            except (OSError, ValueError, AttributeError, KeyError):
                continue
            # A damaged record's odd entries ({"a.png": "x"}) are no record: they crashed every use, --overwrite too.
            entries.update({name: entry for name, entry in files.items() if isinstance(entry, dict)})
        journals = [self.journal] if own else _journals(self.folder)
        return {**entries, **self._confirmed_claims(set(known), journals)}

    @staticmethod
    def _claims(journals: Iterable[Path]) -> list[dict]:
        lines = []
        for journal in journals:
            with suppress(OSError):
                lines += journal.read_bytes().splitlines()
        claims = []
        for line in lines:
            try:
                claim = json.loads(line)
            except ValueError:  # a line torn by a full disk: its file was never renamed into place
                continue
            if isinstance(claim, dict) and {"name", "command", "size", "sha256"} <= claim.keys() and \
                    isinstance(claim["name"], str) and isinstance(claim["size"], int):  # a damaged line: none
                claims.append(claim)
        return claims

    def _confirmed_claims(self, known: set[str], journals: Iterable[Path]) -> dict[str, dict]:
        """Record entries for the claimed files that hold the claimed content now."""
        confirmed = {}
        for claim in self._claims(journals):
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
                                            "mtime_ns": found.st_mtime_ns, **_source(claim)}
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

    def written(self, paths: Iterable[str | os.PathLike], source: str, entries: dict[str, dict] | None = None) -> bool:
        """Whether every one of ``paths`` is as this command wrote it from ``source`` (a fingerprint of what the
        files were made from, given to :meth:`write`): a run stopped halfway and run again leaves those alone."""
        entries = self.entries() if entries is None else entries
        return all(entries.get(self._name(path), {}).get("source") == source and self.owned(path, entries)
                   for path in paths)

    def entries(self) -> dict[str, dict]:
        """The record of the folder, with the claims of every journal that the files bear out."""
        return self._entries()

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
        identities = [_identity(path) for path in paths]  # None: nothing there
        self._found_at_claim.update(zip(destinations(paths), identities, strict=True))
        entries = self._entries()
        foreign = [p for p, identity in zip(paths, identities, strict=True)
                   if identity is not None and not self.owned(p, entries)]
        if foreign:
            raise ConfigError(self._foreign_message(foreign, entries))

    def _foreign_message(self, foreign: list[Path], entries: dict[str, dict]) -> str:
        """Why ``foreign`` files are not replaced: not this command's, or its own changed since (a touched
        metrics.json was said to be "not written by an earlier fcnseg eval", which it was)."""
        changed = [p for p in foreign if entries.get(self._name(p), {}).get("command") == self.command]
        others = [p for p in foreign if p not in changed]
        reasons = []
        for paths, why in ((others, f"not written by an earlier fcnseg {self.command}"),
                           (changed, f"written by an earlier fcnseg {self.command} and changed since (edited or "
                                     "touched: maybe yours now)")):
            if paths:
                one = len(paths) == 1
                reasons.append(f"{listing(paths, _SHOWN)} already exist{'s' if one else ''} and "
                               f"{'was' if one else 'were'} {why}")
        return (f"{'; '.join(reasons)}: choose another --out, or pass --overwrite to replace "
                f"{'it' if len(foreign) == 1 else 'them'}")

    def record(self, paths: Iterable[str | os.PathLike], growing: bool = False, flush: bool = False,
               source: str | None = None) -> None:
        """Note files this command has just written (the record is saved at most once a second, and by
        :meth:`flush`). ``growing`` files (logs appended to) are recorded by name only, and may be recorded
        before they are made, so that a run killed at any moment leaves nothing unaccounted for. ``source``:
        see :meth:`written`."""
        for path in paths:
            if growing:
                self._pending[self._name(path)] = {"command": self.command, "size": None, "mtime_ns": None}
                continue
            stat = Path(path).stat()
            self._pending[self._name(path)] = {"command": self.command, "size": stat.st_size,
                                               "mtime_ns": stat.st_mtime_ns, **_source({"source": source})}
        if flush or time.monotonic() - self._flushed > _FLUSH_SECONDS:
            self.flush()

    def write(self, path: str | os.PathLike, data: bytes, source: str | None = None) -> Path:
        """Write ``data`` to ``path`` atomically, claimed before it lands and then recorded (see :meth:`landing`;
        ``source``: see :meth:`written`)."""
        path = Path(path)
        with self.landing([path], source=source), atomic_open(path) as handle:
            handle.write(data)
        return path

    @contextmanager
    def landing(self, paths: Iterable[str | os.PathLike], source: str | None = None,
                flush: bool = False) -> Iterator[None]:
        """Within the block, every one of ``paths`` written through the atomic writer (:mod:`fcnseg.atomic`, which
        every writer of fcnseg uses: checkpoints, exports, pictures) is claimed in the journal just before its
        temporary file is renamed into place, with the temporary file's size and SHA-256; each one written is
        recorded when the block ends (``source``: see :meth:`written`; ``flush``: see :meth:`record`).

        Why claim first: a record saved after the rename would miss the file when the process dies between the
        two (kill -9, SIGTERM, a full disk), and the next run would take fcnseg's own file for the user's and
        refuse it. The claim is one ``write`` to a file opened for appending: once it returns, the kernel has the
        line even if the process is killed the next instant. (It is not synced to the disk: after a power cut a
        lost claim makes the next run refuse a file it wrote, asking for --overwrite; it never makes fcnseg
        replace a user's file.) Hashing costs one read of the file, from the page cache.
        """
        landed: list[Path] = []

        def claim(path: Path, tmp: Path) -> None:
            digest = _sha256(tmp)
            if digest is None:
                raise WriteError(f"cannot write {path}: its temporary file {tmp.name} cannot be read back")
            self._refuse_if_changed(path)  # after the hashing: as near the rename as can be
            self._claim({"name": self._name(path), "command": self.command, "size": tmp.stat().st_size,
                         "sha256": digest, **_source({"source": source})})
            landed.append(path)

        with before_landing(paths, claim):
            yield
        for key, path in zip(destinations(landed), landed, strict=True):  # this command's own file now:
            if key in self._found_at_claim:  # writing it again is no change by another process
                self._found_at_claim[key] = _identity(path)
        self.record(landed, flush=flush, source=source)

    def _refuse_if_changed(self, path: Path) -> None:
        """Refuse to land ``path`` if, since :meth:`claim` let it through, something else made or replaced it
        (the user, or another command writing the same --out): the check at the start cannot see what appears
        while a long command runs. What it leaves open is the microseconds between this check and the rename: two
        commands landing the same --out within them both pass, and the later rename wins."""
        before = self._found_at_claim.get(destinations([path])[0], _UNCLAIMED)
        if before is _UNCLAIMED or _identity(path) == before:
            return
        raise ConfigError(f"{path} was {'made' if before is None else 'changed'} by another process while fcnseg "
                          f"{self.command} ran, and was left as it is: choose another --out, or pass --overwrite "
                          "to replace it")

    def _claim(self, claim: dict) -> None:
        journal = self.journal
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
        """Merge what was recorded, and the claims of this object's journal that the files bear out, into its
        record file (atomically; a shard's own, which no other process writes); then remove the journal if this
        object wrote to it (no other process writes it meanwhile: the commands that write claims hold the
        folder, or their shard of it)."""
        if not self._pending and not (self._claimed and self.journal.exists()):
            return
        self._save(self.record_file, {**self._entries(known=self._pending, own=True), **self._pending})
        if self._claimed:  # every claim in it is in the record now, or its file never landed
            self.journal.unlink(missing_ok=True)
        self._pending.clear()
        self._flushed = time.monotonic()

    def settle(self) -> None:
        """Fold every journal, and the shards' records, into the folder's record, and remove them. Call it only
        alone in the folder (holding :func:`folder_lock`, or first in it under :func:`shard_lock`)."""
        folded = [path for path in [*_journals(self.folder), *_shard_files(self.folder, ".json")] if path.exists()]
        if not folded:
            return
        self._save(self.folder / RECORD, self._entries())
        for path in folded:
            path.unlink(missing_ok=True)

    @staticmethod
    def _save(record: Path, entries: dict[str, dict]) -> None:
        with atomic_open(record, "w", encoding="utf-8") as handle:
            json.dump({"files": entries}, handle, indent=1, sort_keys=True)

    def _files(self) -> list[Path]:
        return [p for p in sorted(self.folder.rglob("*")) if p.is_file() and not _bookkeeping(p.name)]

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
        for path in [*_journals(self.folder), *_shard_files(self.folder, ".json")]:
            path.unlink(missing_ok=True)


_UNCLAIMED = object()


def _identity(path: str | os.PathLike) -> tuple[int, int, int] | None:
    """What tells a file apart from the one found earlier at ``path`` (None: nothing there): a rename onto it
    gives another inode, a rewrite in place another size or modification time."""
    try:
        found = os.lstat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


def keeps_a_record(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a record or a journal of outputs (a single process's or a shard's): whether an
    earlier fcnseg command wrote there at all (cheaper than reading :meth:`Outputs.entries`)."""
    folder = Path(folder)
    return any(path.exists() for path in (folder / RECORD, *_journals(folder))) or bool(_shard_files(folder, ".json"))


def _shard_files(folder: Path, suffix: str) -> list[Path]:
    """The shards' records (``suffix`` ``.json``) or journals (``.pending``) in ``folder``."""
    return sorted(path for path in folder.glob(f".fcnseg-outputs.*-of-*{suffix}") if _SHARD_FILE.fullmatch(path.name))


def _journals(folder: Path) -> list[Path]:
    """Every journal in ``folder``: a single process's, and those of the shards of sharded runs."""
    return [folder / JOURNAL, *_shard_files(folder, ".pending")]


def _bookkeeping(name: str) -> bool:
    """Whether ``name`` is one of the files fcnseg keeps about a folder (records, journals, locks)."""
    return name in (RECORD, LOCK, JOURNAL, SHARDS_LOCK) or _SHARD_FILE.fullmatch(name) is not None


def _source(entry: dict) -> dict:
    """``{"source": ...}`` when ``entry`` has one, else nothing (entries without one were not made from a
    fingerprinted source)."""
    return {"source": entry["source"]} if isinstance(entry.get("source"), str) else {}


def _real(path: str | os.PathLike) -> Path:
    """``path`` with symbolic links resolved, as far as they lead (``Path.resolve`` raises on a loop)."""
    return Path(os.path.realpath(path))


def _sha256(path: Path) -> str | None:
    """The file's SHA-256, None when it cannot be read (then it is not the file recorded)."""
    try:
        return file_digest(path, "sha256")
    except OSError:
        return None


def output_file(path: str | os.PathLike, command: str, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Outputs:
    """The :class:`Outputs` of a single-file output (``--out FILE``), already claimed. A folder another command
    holds (:func:`folder_lock`: a training run's) is refused: two commands would rewrite its record at once. The
    folder itself is not held (a lock file would be left in the user's folder); two single-file commands into one
    folder at once each claim their file before it lands (:meth:`Outputs.landing`), which the record keeps; of two
    into the same file, the second to finish is refused (a file made at ``path`` meanwhile is kept)."""
    path = Path(path)
    refuse_if_held(path.parent)
    remove_abandoned_temporaries(path.parent, [path.name])  # what a killed run of this command left
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


# The descriptors of the folder locks (flock) this process holds. A child forked meanwhile (a data-loader worker)
# shares each lock with it until it closes its copy: after a kill -9 of a training its workers, which take seconds
# to notice, held the folder on (an immediate --resume was refused, naming the dead process).
_HELD_LOCKS: set[int] = set()


def _forget_held_locks() -> None:
    """In a forked child: its copies of the held locks' descriptors point at /dev/null, so that each lock goes
    with its holder alone (the child's file objects stay valid; it never writes them)."""
    if not _HELD_LOCKS:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for descriptor in _HELD_LOCKS:
            with suppress(OSError):
                os.dup2(null, descriptor)
    finally:
        os.close(null)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_held_locks)


def _held(handle):
    """``handle``, a lock file opened to hold, noted for forked children to forget (:func:`_forget_held_locks`)."""
    _HELD_LOCKS.add(handle.fileno())
    return handle


def _let_go(handle) -> None:
    """Close a held lock file (closing lets go of its locks; the file stays), once."""
    if handle.closed:
        return
    _HELD_LOCKS.discard(handle.fileno())
    with suppress(OSError):  # the unwritten pid of a full disk: the file is closed all the same
        handle.close()


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str, stale: Iterable[str] = (),
                option: str = "--out") -> Iterator[None]:
    """Hold ``folder`` for this process; another process gets a one-line refusal naming the holder's pid
    (and ``option``, the command's flag that names the folder).

    On taking the lock, temporary files that atomic writes of the names in ``stale`` left behind (a run
    killed mid-write) are removed: no live writer can own them any more. A folder this call made is removed
    again if nothing but the lock file is in it at the end (a refused command leaves no trace).
    """
    folder = Path(folder)
    made = [path for path in (folder, *folder.parents) if not os.path.lexists(path)]  # innermost first
    handle = _held(_take_lock(folder, option))
    try:
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
        if made:
            _remove_if_only_the_lock(made)
        _let_go(handle)


def _take_lock(folder: Path, option: str):
    """The lock file of ``folder``, opened and locked (the folder made if needed). The lock file is only ever
    removed by its holder, with its folder (:func:`_remove_if_only_the_lock`): a lock taken on a file that
    was removed meanwhile holds nothing, so it is let go and taken again on the file now there."""
    import fcntl  # POSIX only, like the rest of the run-folder handling

    for _ in range(100):
        make_folder(folder)
        try:
            handle = open(folder / LOCK, "a+")  # noqa: SIM115 - held open for the lifetime of the lock
        except FileNotFoundError:  # the folder went between the two calls: its maker let it go
            continue
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ConfigError(f"{folder} is in use by {holder}: wait for it to finish, or choose another "
                              f"{option}") from None
        if same_file(handle.fileno(), folder / LOCK):
            return handle
        handle.close()
    raise WriteError(f"cannot lock {folder}: its lock file keeps being removed (is another program deleting it?)")


def _remove_if_only_the_lock(made: list[Path]) -> None:
    """Remove the folders this command made (``made``, innermost first) when it wrote nothing into them: the
    lock file first, while the lock is held (a process that opened that file meanwhile finds it gone once it
    has the lock, and starts again), then each folder that is empty."""
    with suppress(OSError):
        if os.listdir(made[0]) == [LOCK]:
            os.unlink(made[0] / LOCK)
            for folder in made:
                os.rmdir(folder)  # stops at the first folder something else was put into


@contextmanager
def shard_lock(outputs: Outputs, what: str, run: str, stale: Iterable[str] = (),
               stale_alone: Iterable[str] = ()) -> Iterator[bool]:
    """Hold ``outputs.folder`` for the shard ``outputs.shard`` of the sharded run ``run`` (a fingerprint every
    process of that run computes alike: its inputs, options and number of shards); yields whether this process
    came first (found nobody in the folder).

    The shards of one run hold the folder's lock, ``.fcnseg.lock``, shared: any other command (which holds it
    alone, :func:`folder_lock`) is refused while they run, and refuses them while it runs. Each shard also
    holds its own byte of ``.fcnseg.shards.lock`` (a POSIX record lock, let go when the process ends), so the
    same shard started twice is refused. The first shard writes ``run`` into that file; a process of another
    run (other inputs, options or number of shards, whose outputs could overlap) is refused. Byte 0 is a gate,
    held for a moment while a shard joins.

    The process that comes first, alone in the folder behind the gate, folds what earlier runs left (journals,
    shards' records) into the folder's record (:meth:`Outputs.settle`), and removes the temporaries atomic
    writes of ``stale_alone`` (the record, other shards' outputs) left; every shard removes those of ``stale``
    (its own outputs and record): no live writer can own them then. The last process to finish folds the
    shards' records into the folder's.
    """
    import fcntl  # POSIX only, like the rest of the run-folder handling

    if outputs.shard is None:
        raise ValueError("shard_lock needs the Outputs of a shard (Outputs(..., shard=Shard(i, n)))")
    folder, shard = make_folder(outputs.folder), outputs.shard
    handles = []
    try:
        for name in (SHARDS_LOCK, LOCK):
            try:
                handles.append(_held(open(folder / name, "a+")))  # noqa: SIM115 - open for the lock's lifetime
            except OSError as error:
                raise WriteError(f"cannot write {folder / name}: {error.strerror or error}") from None
        shards, held = handles
        with _byte_lock(shards, 0):
            first = _join(held, shards, folder, what, shard, run, outputs.overwrite)
            try:
                fcntl.lockf(shards.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 1 + shard.index)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EAGAIN):
                    raise _no_locks(shards, error) from None
                raise ConfigError(f"shard {shard} of the run in {folder} is running already: each shard runs once; "
                                  "wait for it to finish") from None
            if first:
                remove_temporaries(folder, stale_alone)
                outputs.settle()
            remove_temporaries(folder, [*stale, outputs.record_file.name])
        yield first
        with _byte_lock(shards, 0):
            _mark_done(shards, shard)
            if _alone(held):  # the last shard out: the shards' records, into the folder's
                outputs.settle()
            _let_go(held)  # behind the gate: the next shard out then knows whether it is the last
    finally:
        for handle in handles:
            _let_go(handle)  # the files stay: unlinking could let two hold one


def _shards_done(shards, folder: Path, run: str, overwrite: bool) -> list[int]:
    """The shards of ``run`` that have finished in ``folder`` (the shards file keeps them between processes), or
    none for a new run. A new run over another's that has not finished is refused unless ``overwrite``: shards
    that ran at different times on other inputs or options split other lists, and images were never segmented
    while every shard reported success."""
    shards.seek(0)
    try:
        found = json.loads(shards.read())
        earlier, count, done = found["run"], int(found["shards"]), [int(index) for index in found.get("done", [])]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []  # none, or damaged: nothing known to go on from
    if earlier == run:
        return sorted(set(done))
    if done and len(set(done)) < count and not overwrite:
        raise ConfigError(f"{folder} holds an unfinished sharded run of other inputs, options or number of shards "
                          f"(shards {', '.join(map(str, sorted(set(done))))} of {count} done): run its other shards "
                          "with the same inputs and options (given in any order), or pass --overwrite to start "
                          "another run there")
    return []


def _mark_done(shards, shard: Shard) -> None:
    """Note in the shards file, behind the gate, that ``shard`` has finished."""
    shards.seek(0)
    try:
        found = json.loads(shards.read())
        found["done"] = sorted({*found.get("done", []), shard.index})
    except (ValueError, TypeError, AttributeError):
        return
    _rewrite(shards, json.dumps(found) + "\n")


def _join(held, shards, folder: Path, what: str, shard: Shard, run: str, overwrite: bool = False) -> bool:
    """Behind the gate: hold ``.fcnseg.lock`` shared with the other processes of ``run``, or refuse; True when
    this process came first (then it names the run in the lock files)."""
    import fcntl

    try:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        first = False
    else:  # nobody in the folder: the run starts here, or goes on (shards run one after another)
        done = _shards_done(shards, folder, run, overwrite)
        _rewrite(held, f"{what} --shard {shard} and the other shards of its run (pid {os.getpid()})\n")
        _rewrite(shards, json.dumps({"run": run, "shards": shard.count, "done": done}) + "\n")
        first = True
    try:
        fcntl.flock(held.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # from alone to shared, when first
    except BlockingIOError:  # a command that holds the folder alone
        raise ConfigError(f"{folder} is in use by {_holder(held)}: wait for it to finish, or choose another "
                          "--out") from None
    if not same_file(held.fileno(), folder / LOCK):  # removed by a command that made the folder and let it go
        raise ConfigError(f"{folder} was let go by another command while this shard joined: start it again")
    if first:
        return True
    shards.seek(0)
    try:
        running = json.loads(shards.read()).get("run")
    except (ValueError, AttributeError):
        running = None
    if running != run:
        raise ConfigError(f"{folder} is in use by {_holder(held)}, a sharded run of other inputs, options or number "
                          "of shards: wait for it to finish, or choose another --out")
    return False


def _alone(held) -> bool:
    """Whether nobody but this process holds the folder's lock, which it holds shared (it then holds it alone;
    when not, Linux lets go of it altogether: call it on the way out)."""
    import fcntl

    try:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(handle) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


def _rewrite(handle, text: str) -> None:
    """Replace what the lock file ``handle`` says (who holds it)."""
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(text)
        handle.flush()
    except OSError as error:  # a full disk
        raise WriteError(f"cannot write {handle.name}: {error.strerror or error}") from None


@contextmanager
def _byte_lock(handle, offset: int) -> Iterator[None]:
    """Hold byte ``offset`` of the open file ``handle`` (waiting for it): POSIX record locks belong to the
    process, so another byte this process holds in the file stays held."""
    import fcntl

    try:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_EX, 1, offset)
    except OSError as error:
        raise _no_locks(handle, error) from None
    try:
        yield
    finally:
        fcntl.lockf(handle.fileno(), fcntl.LOCK_UN, 1, offset)


def _no_locks(handle, error: OSError) -> WriteError:
    return WriteError(f"cannot lock {handle.name}: {error.strerror or error} (shards need a file system with POSIX "
                      "record locks: a local disk, or NFS with its lock service)")
