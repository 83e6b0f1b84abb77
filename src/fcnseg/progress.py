"""The one progress helper: a tqdm bar with rate and ETA on a terminal; where stderr is not a terminal (nohup,
SLURM, CI logs), where no bar is drawn, a progress line through :mod:`logging` now and then instead; nothing
with ``--quiet``.

``set_quiet`` switches progress bars and progress lines only; fcnseg's messages (notes, warnings) go through
:mod:`logging` (loggers under ``fcnseg``), whose levels decide what is shown. The progress lines are INFO
messages of the ``fcnseg.progress`` logger (training's of ``fcnseg.train.log``): the CLI shows them as it shows
notes.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
_quiet = False
log = logging.getLogger(__name__)

# Seconds between two progress lines of a bar in a log: often enough to show that a run is alive, rarely
# enough not to fill the log.
LINE_SECONDS = 30.0


def set_quiet(quiet: bool) -> None:
    """Silence every progress bar of this process (``--quiet``)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """Whether progress bars and progress lines are off (``--quiet``)."""
    return _quiet


def lines_instead(enabled: bool = True) -> bool:
    """Whether progress is to be reported as log lines: ``enabled``, not quiet, and stderr is not a terminal
    (a log file or a pipe), where no bar is drawn."""
    return enabled and not _quiet and not sys.stderr.isatty()


def write(line: str) -> None:
    """``line`` on the current ``sys.stderr``, above any progress bar there (tqdm redraws the bar below it)."""
    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def format_seconds(seconds: float) -> str:
    """A duration as progress lines and bars show it: ``05:07``, ``1:02:05``."""
    return tqdm.format_interval(max(0.0, seconds))


class Bar(tqdm):
    """tqdm's bar; where no bar is drawn (:func:`lines_instead`) and ``lines`` is set, a log line at the first
    update after each :data:`LINE_SECONDS`: done of the total, rate, elapsed time and ETA."""

    # No tqdm monitor thread (it only tunes how often a slow bar redraws). tqdm starts it for every bar,
    # disabled ones included, and DataLoader workers are forked right after a bar is made: a thread alive
    # at a fork is a chance for the child to hang (seen once, a worker stuck in threading's after-fork).
    monitor_interval = 0

    def __init__(self, *args: Any, lines: bool = False, **options: Any) -> None:
        super().__init__(*args, **options)
        self.lines = lines
        # A disabled tqdm keeps neither its description nor its unit.
        self.what, self.unit_name = options.get("desc", ""), options.get("unit", "it")
        self.started = self.last_line = time.monotonic()
        self.first = self.count = options.get("initial", 0)
        self.scaled = (options.get("unit_scale", False), options.get("unit_divisor", 1000))

    def update(self, n: float | None = 1) -> bool | None:
        if self.lines:
            self.count += n or 0
            now = time.monotonic()
            if now - self.last_line >= LINE_SECONDS:
                self.last_line = now
                log.info(self.line(now - self.started))
        return super().update(n)

    def line(self, elapsed: float) -> str:
        """``eval: 120/500 img (24%), 4.1 img/s, elapsed 00:30, ETA 01:35`` (the ETA when the total is known)."""
        rate = (self.count - self.first) / max(elapsed, 1e-9)
        scale, divisor = self.scaled
        if scale:  # bytes: 118MB/1.86GB, 4.20MB/s
            amount = functools.partial(tqdm.format_sizeof, suffix=self.unit_name, divisor=divisor)
            done, speed = amount(self.count), amount(rate)
            done += f"/{amount(self.total)}" if self.total else ""
        else:
            done = f"{self.count:.0f}" + (f"/{self.total:.0f}" if self.total else "") + f" {self.unit_name}"
            speed = f"{rate:.1f} {self.unit_name}"
        if self.total:
            done += f" ({100 * self.count / self.total:.0f}%)"
        eta = f", ETA {format_seconds((self.total - self.count) / rate)}" if self.total and rate > 0 else ""
        return f"{self.what or 'progress'}: {done}, {speed}/s, elapsed {format_seconds(elapsed)}{eta}"


def bar(total: int | float | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
        lines: bool = True, **options: Any) -> Bar:
    """A progress bar on stderr, shown only on a terminal, when not quiet and when ``enabled`` (say, rank 0).
    Elsewhere (a log file, a pipe) a progress line every :data:`LINE_SECONDS` instead, unless ``lines`` is False
    (the caller logs its own progress lines)."""
    disable = _quiet or not enabled or not sys.stderr.isatty()
    return Bar(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False,
               file=sys.stderr, lines=lines and lines_instead(enabled), **options)


def track(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
          enabled: bool = True) -> Iterable[T]:
    """``items`` with a progress bar (see :func:`bar`)."""
    with bar(total=total, desc=desc, unit=unit, enabled=enabled) as progress:
        for item in items:
            yield item
            progress.update(1)
