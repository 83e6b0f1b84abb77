"""Ctrl+C and SIGTERM where fcnseg decides when to stop: held over a short stretch and raised after it, taken at a
training step's end, and ignored by the processes a data loader forks (the terminal sends Ctrl+C to all of them).

Standard library only: the ``fcnseg`` command holds Ctrl+C with it while torch is imported.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)


class _StopThisProcess:
    """A SIGINT handler: KeyboardInterrupt in the process that made it, nothing in a process forked from it.

    Data-loader workers are forked with their parent's handlers and ignore Ctrl+C only from
    :func:`fcnseg.runtime.worker_init` on: a Ctrl+C in between raised KeyboardInterrupt in a worker outside torch's
    worker loop, which printed a traceback or ended the worker, and the main process then failed with
    "DataLoader worker exited unexpectedly".
    """

    def __init__(self) -> None:
        self.owner = os.getpid()

    def __call__(self, signum: int, frame: Any) -> None:
        if os.getpid() == self.owner:
            raise KeyboardInterrupt


def _python_interrupt_in_main_thread() -> bool:
    """Whether SIGINT has Python's own handler (or this module's) and this is the main thread: a program's own
    handler is left alone."""
    return threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGINT) is signal.default_int_handler or
        isinstance(signal.getsignal(signal.SIGINT), _StopThisProcess))


@contextlib.contextmanager
def interrupts_in_this_process_only() -> Iterator[None]:
    """Inside, Ctrl+C stops this process as Python's own handler does, and a process forked meanwhile ignores it
    (:class:`_StopThisProcess`)."""
    if not _python_interrupt_in_main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, _StopThisProcess())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


class Pressed(threading.Event):
    """Set by a first Ctrl+C (:func:`deferred_interrupt`); :meth:`wait_said` waits until its note is printed."""

    said: threading.Thread | None = None

    def wait_said(self) -> None:
        if self.said is not None:
            self.said.join()


@contextlib.contextmanager
def deferred_interrupt(note: str, defer: bool = True) -> Iterator[Pressed]:
    """Inside, a first Ctrl+C sets the event returned (and logs ``note``) for the caller to stop where it can
    save its work; a second one raises KeyboardInterrupt at once. A process forked meanwhile ignores Ctrl+C.
    Without ``defer``, or where :func:`_python_interrupt_in_main_thread` is false, Ctrl+C acts as before and the
    event stays clear."""
    pressed = Pressed()
    if not defer or not _python_interrupt_in_main_thread():
        yield pressed
        return
    stop = _StopThisProcess()

    def note_it(signum: int, frame: Any) -> None:
        if os.getpid() != stop.owner or pressed.is_set():
            stop(signum, frame)  # nothing in a forked worker; in this process someone insists: KeyboardInterrupt
            return
        pressed.set()
        # From a thread: logging's lock then waits for a line the main thread is writing (a progress line, say)
        # to end, where here, in the main thread, the note could land between that line and its newline.
        pressed.said = threading.Thread(target=log.warning, args=(note,), daemon=True)
        pressed.said.start()

    before = signal.signal(signal.SIGINT, note_it)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, before)


@contextlib.contextmanager
def signals_held(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Inside, Ctrl+C and SIGTERM are noted, and sent again to the handlers in place before once the block ends.

    For a data loader starting its workers: a handler raising in the fork's own hooks (logging's lock release)
    was reported as "Exception ignored" and dropped, the command then ran to its end and exited 0; raised in the
    loader's constructor, it left an object that could not stop its workers. During fcnseg's imports: torch's
    import code can abort on a KeyboardInterrupt, and a bare ``except`` around an optional import swallows it. A
    second of one signal inside goes to the handler in place before at once (someone insists). Only in the main
    thread; a process forked inside ignores the signals until its own handlers are set
    (:func:`fcnseg.runtime.worker_init`).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner, noted = os.getpid(), []

    def note(signum: int, frame: Any) -> None:
        if os.getpid() != owner:
            return
        if signum in noted and callable(before[signum]):
            before[signum](signum, frame)
        elif signum not in noted:
            noted.append(signum)

    before = {signum: signal.signal(signum, note) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        for signum in noted:
            signal.raise_signal(signum)


def loader_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``loader``, its workers started with the stop signals held (:func:`signals_held`)."""
    with signals_held():
        batches = iter(loader)
    yield from batches
