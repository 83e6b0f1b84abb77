"""The one progress helper: a tqdm bar with rate and ETA on a terminal, nothing in logs or with ``--quiet``.

``set_quiet`` switches progress bars and progress lines only; fcnseg's messages (notes, warnings) go through
:mod:`logging` (loggers under ``fcnseg``), whose levels decide what is shown.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress bars and progress lines are off (``--quiet``)."""
    return _quiet


def write(line: str) -> None:
    """``line`` on the current ``sys.stderr``, above any progress bar there (tqdm redraws the bar below it)."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def bar(total: int | float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        **options: Any) -> tqdm:
    """A progress bar on stderr, shown only on a terminal, when not quiet and when ``enabled`` (say, rank 0)."""
    disable = _quiet or not enabled or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False,
                file=sys.stderr, **options)


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterable[T]:
    """``items`` with a progress bar (see :func:`bar`)."""
    with bar(total=total, desc=desc, unit=unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update(1)
