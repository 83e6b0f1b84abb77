"""The progress helper's bars start no thread: DataLoader workers are forked right after a bar is made
(check_dataset, evaluation), and every thread alive at a fork is a chance for the child to hang (one CI run
hung in a freshly forked worker)."""

from __future__ import annotations

import io
import threading

import pytest
from tqdm import tqdm

import fcnseg.progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("on_a_terminal", [True, False])
def test_a_bar_starts_no_monitor_thread(on_a_terminal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # tqdm starts its monitor thread in __new__, disabled bars included, unless the class's monitor_interval
    # is 0; forget any monitor an earlier test left, so that this one would start.
    monkeypatch.setattr(tqdm, "monitor", None)
    monkeypatch.setattr(fcnseg.progress.Bar, "monitor", None, raising=False)
    if on_a_terminal:
        monkeypatch.setattr("sys.stderr", _Terminal())
    before = set(threading.enumerate())
    with fcnseg.progress.bar(total=3, desc="check") as bar:
        bar.update(1)
        started = set(threading.enumerate()) - before
    for thread in started:  # without the fix: stop the monitor, not to leave it to the next test
        getattr(thread, "exit", lambda: None)()
    assert not started, [thread.name for thread in started]
