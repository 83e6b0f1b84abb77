"""HTTP transfers: the one download mechanism of fcnseg: model weights and dataset archives both come through here.

``download_file`` writes to ``<dest>.part``, resumes an interrupted transfer with an HTTP ``Range``
request, verifies the checksum and only then renames the file into place, so ``dest`` either does not
exist or is complete and verified. Every failure is a ``DownloadError`` whose message names the URL,
the destination and what to do about it (machines are often offline: the fix is to fetch the file
elsewhere and put it where fcnseg looks).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fcnseg.atomic import same_file
from fcnseg.errors import ConfigError, DownloadError
from fcnseg.progress import bar as progress_bar

try:
    import fcntl
except ImportError:  # Windows: downloads of one file in two processes are not kept apart
    fcntl = None

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_MIN_PREFIX = 8
_USER_AGENT = "fcnseg-download/1"


def file_digest(path: str | Path, algorithm: str) -> str:
    """The hex digest of a file's contents with a ``hashlib`` algorithm ("sha256", "md5", ...)."""
    # usedforsecurity=False: md5 is an integrity check here, and FIPS builds refuse it otherwise.
    h = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _expected_digests(sha256: str | None, md5: str | None) -> dict[str, str]:
    """Validate the expected digests (full hex or a prefix of at least 8 hex chars), keyed by algorithm."""
    expected = {}
    for algorithm, value, full_length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is None:
            continue
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]+", value) or not _MIN_PREFIX <= len(value) <= full_length:
            raise ConfigError(
                f"{algorithm} checksum {value!r} must be {_MIN_PREFIX} to {full_length} hex digits "
                "(the full digest or its prefix)"
            )
        expected[algorithm] = value
    return expected


def _mismatches(path: Path, expected: dict[str, str]) -> list[tuple[str, str, str]]:
    """(algorithm, expected, actual) for every expected digest the file does not match."""
    bad = []
    for algorithm, value in expected.items():
        actual = file_digest(path, algorithm)
        if not actual.startswith(value):
            bad.append((algorithm, value, actual))
    return bad


def _network_error(url: str, dest: Path, reason: object, part: Path | None = None) -> DownloadError:
    if isinstance(reason, urllib.error.HTTPError):
        why = f"the server answered HTTP {reason.code} {reason.reason}"
        hint = "Check the URL; if the file moved, download it elsewhere and place it at"
    else:
        if isinstance(reason, urllib.error.URLError):
            reason = reason.reason
        why = str(reason) or type(reason).__name__
        hint = "This machine may be offline: download the file elsewhere and place it at"
    resume = f"; the partial download {part} is kept and a new run resumes it" if part else ""
    return DownloadError(f"could not download {url}: {why}. {hint} {dest}{resume}")


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _content_range_start(response: http.client.HTTPResponse) -> int | None:
    """The first byte of a 206 answer ("Content-Range: bytes 100-199/200" -> 100)."""
    match = re.match(r"\s*bytes\s+(\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _transfer(url: str, dest: Path, part: Path, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``part``, appending to what is already there when the server allows it."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The server has no bytes past our offset: the .part is complete (or longer than the
            # file). Keep it and let the checksum decide.
            return
        raise _network_error(url, dest, e) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, DNS, timeout, TLS
        raise _network_error(url, dest, e) from None
    with response:
        if offset and response.status == 206 and _content_range_start(response) == offset:
            mode = "ab"
        else:
            # 200 (the server ignored Range) or an unexpected range: start again from byte 0.
            mode, offset = "wb", 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and re.fullmatch(r"[0-9]+", length) else None
        received = offset
        bar = progress_bar(total=total, desc=dest.name, unit="B", enabled=progress, initial=offset,
                           unit_scale=True, unit_divisor=1024)
        with bar, open(part, mode) as f:
            while True:
                # Only reading is a network failure; an OSError from f.write (disk full) stays as is.
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _network_error(url, dest, e, part) from None
                if not chunk:
                    break
                f.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise DownloadError(
            f"could not download {url}: the connection closed after {received} of {total} bytes. "
            f"Run the same command again to resume from {part}"
        )


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    replace_mismatch: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The data goes to ``dest + ".part"`` first; an existing ``.part`` is resumed with a ``Range``
    request (and restarted if the server ignores it). ``sha256`` / ``md5`` are full hex digests or
    prefixes of at least 8 characters; the file is renamed to ``dest`` only after they match. If
    ``dest`` already exists and matches (or no checksum is given), it is returned without network
    access; if it does not match it is the user's (a copy placed by hand), refused and left as it is, unless
    ``replace_mismatch`` (a cache of fcnseg's own). ``progress`` shows a progress bar on stderr when it is a
    terminal (see :mod:`fcnseg.progress`). Two processes downloading the same ``dest`` take turns: the second
    waits for the first, then finds the file there.

    Raises ``DownloadError`` on network/HTTP failures and checksum mismatches (the bad ``.part`` is
    deleted), ``ConfigError`` on a malformed checksum.
    """
    dest = Path(dest)
    expected = _expected_digests(sha256, md5)
    part = dest.with_name(dest.name + ".part")
    if _present(dest, expected, url, replace_mismatch):
        return dest
    _refuse_folder(part, url)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot download {url} into {dest.parent}: {error.strerror or error}") from None
    with _turn(part, url):
        if _present(dest, expected, url, replace_mismatch):  # the download this one waited for brought it
            part.unlink(missing_ok=True)
            return dest
        try:
            _transfer(url, dest, part, progress, timeout)
        except DownloadError:
            if part.stat().st_size == 0:  # nothing came: no empty .part left behind
                part.unlink()
            raise
        bad = _mismatches(part, expected)
        if bad:
            part.unlink()
            raise DownloadError(f"checksum mismatch for {url}: {_differences(bad)}. The partial file was deleted; "
                                "run again to retry, and if it keeps failing the file on the server has changed")
        os.replace(part, dest)  # atomic on one file system: dest is never half-written
    return dest


def _present(dest: Path, expected: dict[str, str], url: str, replace_mismatch: bool) -> bool:
    """Whether ``dest`` is already the file wanted; a folder in its place, or (unless ``replace_mismatch``) a
    file with other contents, is refused."""
    _refuse_folder(dest, url)
    if not dest.is_file():
        return False
    bad = _mismatches(dest, expected)
    if bad and not replace_mismatch:
        raise DownloadError(f"{dest} exists but is not the file {url} serves ({_differences(bad)}): an incomplete "
                            "or other copy; it was left as it is. Move it away or delete it, then run again")
    return not bad


def _refuse_folder(path: Path, url: str) -> None:
    if path.is_dir():
        raise DownloadError(f"cannot download {url}: {path} is a folder, where the download's file goes; move it "
                            "away, then run again")


def _differences(bad: list[tuple[str, str, str]]) -> str:
    return "; ".join(f"expected {algorithm} {want}, got {got}" for algorithm, want, got in bad)


@contextmanager
def _turn(part: Path, url: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``part`` (made if absent) for the block: another process downloading the
    same file would append to it, so it waits its turn. Where locks cannot be taken it goes on without."""
    while True:
        try:
            descriptor = os.open(part, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise DownloadError(f"cannot download {url} into {part}: {error.strerror or error}") from None
        if fcntl is None:
            break
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("another process is downloading %s into %s: waiting for it to finish", url, part)
                fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError:  # a file system without flock
            break
        if same_file(descriptor, part):
            break
        os.close(descriptor)  # renamed into place or deleted by the one waited for: look again
    try:
        yield
    finally:
        os.close(descriptor)


def cache_dir() -> Path:
    """Where downloaded weights live: torch hub's ``checkpoints`` folder (honours ``$TORCH_HOME``)."""
    import torch.hub  # lazy: importing torch is slow and only this helper needs it

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_download(
    url: str, sha256: str | None = None, md5: str | None = None, file_name: str | None = None
) -> Path:
    """Download ``url`` into ``cache_dir()`` (named after the URL, or ``file_name``) unless already there.

    A file with a checksum is cached by its name, as torch hub does: another URL's file of that name fails the
    checksum and is downloaded again over it. A file without one is cached in a folder of its own URL's
    (``<sha256 of the URL, 12 digits>/<name>``), so that two URLs ending in the same name (``v1/fcn8s.pth``,
    ``v2/fcn8s.pth``) cannot be taken for each other."""
    name = file_name or Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise ConfigError(f"cannot derive a file name from {url!r}: give the URL of the file itself, ending in its "
                          "name (.../fcn8s.pth), or in Python pass file_name=")
    folder = cache_dir()
    if sha256 is None and md5 is None:
        folder = folder / hashlib.sha256(url.encode()).hexdigest()[:12]
    return download_file(url, folder / name, sha256=sha256, md5=md5, replace_mismatch=True)
