"""The one error family: every problem a user can fix raises a subclass of :class:`FcnsegError`.

The command line prints these as one line (``fcnseg: error: ...``) and exits with code 2; anything
else is a bug and keeps its traceback. Each class also derives from the built-in exception Python
users would expect (``ValueError`` for bad values and data, ``RuntimeError`` for a run that cannot go
on), so ``except ValueError`` keeps working for library callers.
"""

from __future__ import annotations

import difflib
import os
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path


class FcnsegError(Exception):
    """Base class: a problem with the user's input, files or environment; the message says how to fix it."""


class ConfigError(FcnsegError, ValueError):
    """An option, argument or config value of the wrong type or out of range."""


class DataError(FcnsegError, ValueError):
    """Bad input data: the message names the file (or folder) and says what was expected."""


class LimitError(DataError):
    """An input over a size limit (pixels of an image, bytes of an upload), refused before it is decoded."""


class WeightsError(FcnsegError, ValueError):
    """A weights or checkpoint file that cannot be used, with the reason and the fix."""


class TrainingError(FcnsegError, RuntimeError):
    """A training run that cannot start or go on (e.g. the loss became NaN)."""


class DownloadError(FcnsegError, RuntimeError):
    """A file that could not be downloaded, verified or unpacked."""


class ExportError(FcnsegError, RuntimeError):
    """An export that could not be made, or that does not reproduce the PyTorch model."""


class WriteError(FcnsegError, OSError):
    """A file that could not be written: a file where a folder should be, no permission, a full disk."""


class RequestError(FcnsegError):
    """A request ``fcnseg serve`` refuses: an HTTP status and a message for the person at the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def listing(items: Sequence[object], shown: int = 10, sep: str = ", ") -> str:
    """The first ``shown`` of ``items`` for a message, then how many more: ``a, b and 3 more``; with a
    line-break separator (``"\n  "``) one per line, then ``... and 3 more`` on a line of its own."""
    text = sep.join(str(item) for item in items[:shown])
    rest = len(items) - shown
    if rest <= 0:
        return text
    return f"{text}{sep}... and {rest} more" if "\n" in sep else f"{text} and {rest} more"


def format_bytes(count: float, decimals: int = 1) -> str:
    """A size for people, in the largest unit it reaches (``1 byte``, ``488 KB``, ``68 MB``, ``10.8 GB``): never
    ``0 MB`` for a size that is not 0. Every size fcnseg prints goes through this. ``decimals``: below 100 of the
    unit (one fewer from 100 on)."""
    if count < 1024:
        return "1 byte" if count == 1 else f"{count:.0f} bytes"
    for unit in ("KB", "MB", "GB", "TB"):
        count /= 1024
        if count < 1024 or unit == "TB":
            break
    shown = decimals if count < 100 else decimals - 1
    number = f"{count:.{shown}f}".rstrip("0").removesuffix(".") if shown > 0 else f"{count:.0f}"
    return f"{number} {unit}"


def did_you_mean(unknown: Iterable[str], known: Iterable[str]) -> str:
    """`` (did you mean iterations for itterations?)`` for the unknown names close to a known one (difflib), or
    nothing: for the messages that refuse a misspelt option."""
    known = list(known)
    guesses = [f"{close[0]} for {name}" for name in unknown if (close := difflib.get_close_matches(name, known, 1))]
    return f" (did you mean {', '.join(guesses)}?)" if guesses else ""


def unexpanded_home(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be meant as written, when it starts with a ``~`` the shell left as it is (after ``=`` in
    ``--out=~/x``, or quoted): it would make a folder named ``~`` here. None for other paths."""
    text = os.fspath(path)
    if text == "~" or text.startswith("~/"):
        return (f"{text!r} starts with a ~ that the shell did not expand (it would be a folder named ~ here): "
                "write $HOME instead, or --out ~/... with a space")
    return None


def require_model_file(path: str | os.PathLike, what: str = "model file",
                       suffixes: Sequence[str] = (".pth", ".onnx", ".pt")) -> Path:
    """``path`` if it is a file; else a WeightsError saying it does not exist, or that it is a folder (a run's
    folder, say) and which files of ``suffixes`` in it could be meant."""
    path = Path(path)
    if path.is_file():
        try:
            path.open("rb").close()
        except OSError as error:  # a PermissionError traceback from every command that read it
            raise WeightsError(f"{path} cannot be read ({error.strerror or error}): give this user read access to "
                               "it") from None
        return path
    if path.is_dir():
        inside = sorted(str(p) for p in path.iterdir() if p.suffix in suffixes and p.is_file())
        files = " or ".join(suffixes).replace(" or ", ", ", len(suffixes) - 2)
        raise WeightsError(f"{path} is a folder, not the {what}: give the {files} file itself"
                           + (f", e.g. {listing(inside, 3, ' or ')}" if inside else ""))
    raise WeightsError(f"{what} not found: {path}")


# Control characters (C0, DEL, C1), format characters (bidi overrides, zero-width ones), lone surrogates (file
# names that are not UTF-8) and the Unicode line and paragraph separators: a terminal acts on them (clears the
# screen, sets the title, reverses the line) or cannot print them.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: object, newlines: bool = False) -> str:
    """``text`` safe to print on a terminal: each control or format character as a visible escape (``\\x1b``,
    ``\\u202e``), every other character as it is; with ``newlines``, line breaks stay (messages of several lines).

    Every name fcnseg prints (class names, dataset names, file names, values in messages) goes through this;
    files keep the real names.
    """
    text = str(text)
    if text.isprintable():  # the common case, fast
        return text
    return "".join(_escaped(char, newlines) for char in text)


def _escaped(char: str, newlines: bool) -> str:
    if (char == "\n" and newlines) or unicodedata.category(char) not in _UNPRINTABLE:
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


_WORKER_PREFIX = "Caught "
_WORKER_MARK = "Original Traceback (most recent call last):"


def user_message(error: FcnsegError) -> str:
    """The message to show for ``error``, without DataLoader's worker wrapping.

    An exception raised in a DataLoader worker process is re-raised in the main process as the same
    class with a message that holds the worker's whole traceback; the user's message is its last part.
    """
    text = str(error)
    if not (text.startswith(_WORKER_PREFIX) and _WORKER_MARK in text):
        return text
    kind = type(error)
    for name in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        index = text.rfind("\n" + name)
        if index >= 0:
            return text[index + 1 + len(name):].rstrip("\n")
    return text
