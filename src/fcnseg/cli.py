"""The ``fcnseg`` command: one subcommand per task (train, eval, predict, export, serve, ...).

Errors a user can fix (every :class:`~fcnseg.errors.FcnsegError`) are printed as one line and exit with
code 2; anything else is a bug and keeps its traceback.

Messages: the library logs notes and warnings on loggers under ``fcnseg`` (``fcnseg.train.folder``, ...). For
the duration of one call :func:`main` puts one handler on the ``fcnseg`` logger that prints each message as
``fcnseg COMMAND: MESSAGE`` on stderr, at level INFO, or WARNING with ``--quiet``; the logger stops
propagating meanwhile, so a program that configured the root logger does not see the lines twice. Every line
printed goes through :func:`~fcnseg.errors.printable`: names in it cannot drive the terminal.

Ctrl+C: :func:`main` answers it from its first line on with ``fcnseg: interrupted`` and exit code 130, also
while torch and the commands are imported (seconds); so this module imports nothing heavy at its top, the
commands and their libraries are imported inside :func:`main`. During those imports a first Ctrl+C is held
until they end (:func:`fcnseg.signals.signals_held`): a KeyboardInterrupt raised inside them can abort the process
(torch's C++ import code terminates on it) or be swallowed (a bare ``except`` around an optional import).
SIGTERM (``kill PID``, a scheduler or a container stopping) stops a command the same way once it runs
(:func:`_terminate_as_interrupt`): ``fcnseg: terminated``, exit code 143. Data-loader workers leave Ctrl+C to the
main process (:func:`fcnseg.signals.interrupts_in_this_process_only`), and a training in one process takes a first
Ctrl+C at the end of its step, to save ``last.pth`` there (:func:`fcnseg.signals.deferred_interrupt`).

Under torchrun every process runs :func:`main`: what a run prints once (tables, notes) comes from rank 0 only;
the other ranks print only warnings and errors, and a process of several names itself in them (``fcnseg train:
error: [rank 1 on HOST] ...``), so that a failure on one machine of many says where it happened. A process
that loses contact with the others (one of them stopped or was killed, a machine was lost) says so in one line
and exits with code 1: the process that stopped first says why, and torchrun stops or restarts the rest (under
torchrun it first waits for torchrun's SIGTERM, so that torchrun names the process that stopped first).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

from fcnseg import __version__
from fcnseg.commands import COMMANDS
from fcnseg.errors import FcnsegError, printable, user_message
from fcnseg.signals import interrupts_in_this_process_only, signals_held


def _unavailable(command: str, error: ImportError):
    def run(args: argparse.Namespace) -> int:
        print(printable(f"fcnseg {command}: error: this command cannot run here: {error}"), file=sys.stderr)
        return 2

    return run


class _Parser(argparse.ArgumentParser):
    """argparse's parser (subcommands' parsers are of its class too), its usage errors made safe for a terminal:
    they quote what was typed."""

    def error(self, message: str) -> NoReturn:
        super().error(printable(message))


def build_parser() -> argparse.ArgumentParser:
    """The ``fcnseg`` parser with every command's (importing the commands: torch and the rest)."""
    parser = _Parser(prog="fcnseg", description="Fully Convolutional Networks for segmentation")
    parser.add_argument("--version", action="version",
                        version=f"fcnseg {__version__} (torch {importlib.metadata.version('torch')})")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fcnseg.commands.{name}")
        except ImportError as error:  # e.g. an optional dependency is missing: the other commands still work
            command = "eval" if name == "evaluate" else name
            # Whatever follows the command is taken as plain words (no prefix character starts an option), so
            # that `fcnseg serve NET --port 8001` gets the reason, not argparse's "unrecognized arguments".
            broken = subparsers.add_parser(command, help=f"(unavailable: {error})", prefix_chars="\0",
                                           add_help=False)
            broken.add_argument("words", nargs="*", help=argparse.SUPPRESS)
            broken.set_defaults(func=_unavailable(command, error))
            continue
        module.add_parser(subparsers)
    return parser


class _CommandHandler(logging.Handler):
    """Prints fcnseg's messages as ``fcnseg COMMAND: MESSAGE`` on the ``sys.stderr`` of the moment (tests and
    notebooks swap it), above any progress bar."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(f"fcnseg {command}: {_where()}".replace("%", "%%") + "%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from fcnseg.progress import write  # tqdm: not imported before main() can answer Ctrl+C

        try:
            write(printable(self.format(record), newlines=True))
        except Exception:  # logging's own policy: a failing handler reports, never raises
            self.handleError(record)


@contextlib.contextmanager
def messages(command: str, quiet: bool) -> Iterator[None]:
    """fcnseg's log messages printed for ``command`` while inside: notes (INFO) unless ``quiet``, warnings always.

    Everything is put back on the way out: :func:`main` may run many times in one process.
    """
    logger = logging.getLogger("fcnseg")
    handler = _CommandHandler(command)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    from fcnseg.runtime import is_main_process  # torch: not imported before main() can answer Ctrl+C

    # Notes are the same on every rank under torchrun: rank 0's are enough.
    logger.setLevel(logging.WARNING if quiet or not is_main_process() else logging.INFO)
    logger.propagate = False  # printed here; the root logger's handlers (if any) would print it again
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _where() -> str:
    """``[rank R on HOST] `` in a process of several under torchrun, else nothing."""
    from fcnseg.runtime import process_label  # torch: not imported before main() can answer Ctrl+C

    label = process_label()
    return f"[{label}] " if label else ""


def _error_line(line: str) -> None:
    """``line`` on stderr in one write: the processes of a torchrun run share one terminal (unbuffered), and
    print's two writes (the text, then the newline) let their lines run into each other."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors become one line on stderr and exit code 2, Ctrl+C (at any
    moment, the imports included) ``fcnseg: interrupted`` and exit code 130, SIGTERM (once the command runs)
    ``fcnseg: terminated`` and exit code 143."""
    _TERMINATED.clear()
    with _stops_ignored_when_stopping() as stopping:
        try:
            return _run(argv)
        except KeyboardInterrupt:
            stopping()
            if _TERMINATED.is_set():
                _error_line("fcnseg: terminated")
                return 128 + signal.SIGTERM
            _error_line("fcnseg: interrupted")  # one write: torchrun's processes share the terminal
            return 130


def entry() -> NoReturn:
    """The ``fcnseg`` console command: :func:`main`, then the interpreter's exit with Ctrl+C and SIGTERM ignored.
    Its work is done and said by then; torch's clean-up takes about a second, and a Ctrl+C in it printed an
    "Exception ignored in atexit callback" traceback, or ended a finished run with SIGINT's exit status."""
    try:
        code = main()
    finally:  # --help and --version leave through SystemExit
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
    sys.exit(code)


@contextlib.contextmanager
def _stops_ignored_when_stopping() -> Iterator[Callable[[], None]]:
    """Yields a function that ignores Ctrl+C and SIGTERM until the block ends: called once a command stops, so
    that a second Ctrl+C, while the stopped command's loader workers are joined (when its exception is let go),
    cannot print "Exception ignored ... KeyboardInterrupt" tracebacks from their clean-up. Main thread only."""
    before: dict[int, Any] = {}

    def stopping() -> None:
        if threading.current_thread() is threading.main_thread():
            before.update({signum: signal.signal(signum, signal.SIG_IGN) for signum in (signal.SIGINT, signal.SIGTERM)})

    try:
        yield stopping
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _exit_at_once(code: int) -> NoReturn:
    """End a torchrun process whose work is done and written, skipping the interpreter's teardown: there, gloo's
    threads were destroyed while joinable now and then ("terminate called without an active exception", exit
    -6), and torchrun reported a finished run as failed (docs/distributed.md)."""
    _flush_all()
    os._exit(code)


def _flush_all() -> None:
    """Write out what logging handlers and the standard streams still hold: ``os._exit`` and a signal's default
    action drop it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()


LOST_CONTACT_WAIT_S = 5.0  # torchrun's agent looks every 0.1 s (--monitor-interval); 50 looks, for a busy machine


def _leave_after_torchrun_looks() -> NoReturn:
    """End a torchrun process that lost contact with its group, after waiting for torchrun to see the process
    that stopped first: torchrun names as the cause the failure it saw first, and of those it sees in one look,
    the lowest rank (its timestamps are whole seconds). A process that left at once was seen in the same look as
    the killed one and named in its place (rank 0 exit 1, hiding an out-of-memory kill, say). torchrun ends the
    wait with SIGTERM, which has its default action here (:func:`_terminate_as_interrupt`); if it does not come
    (the process that stopped ran on another machine), the process leaves with code 1, skipping the
    interpreter's teardown where gloo aborted (:func:`_exit_at_once`)."""
    _flush_all()
    time.sleep(LOST_CONTACT_WAIT_S)
    _exit_at_once(1)


# Set by SIGTERM's handler (:func:`_terminate_as_interrupt`): the KeyboardInterrupt that main() catches was SIGTERM.
# A flag rather than an exception class of its own: an interrupt is not one of fcnseg's errors.
_TERMINATED = threading.Event()


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM stops the command as Ctrl+C does: as an exception, so that its ``finally`` blocks run. A
    training's data-loader workers are then joined: by default SIGTERM ends the main process at once, and its
    orphaned workers linger a few seconds, their CPU time lost to ``/usr/bin/time`` (how two documented CamVid
    figures lost theirs). A second SIGTERM ends the process at once (someone insists). Only where SIGTERM has its
    default action, in the main thread, and not in a torchrun group of several, whose agent stops its workers
    itself (SIGTERM, then SIGKILL after its grace period) and where unwinding could wait on a collective."""
    from fcnseg.runtime import launched_rank

    if threading.current_thread() is not threading.main_thread() or launched_rank() is not None or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    owner = os.getpid()

    def terminated(signum: int, frame: object) -> None:
        if os.getpid() != owner:  # a loader worker forked before its own handler is set (runtime.worker_init)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _TERMINATED.set()
        raise KeyboardInterrupt

    with _handling(signal.SIGTERM, terminated, signal.SIG_DFL):
        yield


@contextlib.contextmanager
def _handling(signum: int, handler: object, then: object) -> Iterator[None]:
    """``handler`` answers signal ``signum`` inside; ``then`` after (Python's own, the checks above made sure)."""
    signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, then)


def _run(argv: list[str] | None) -> int:
    with signals_held((signal.SIGINT,)):  # the imports: torch, the commands
        from fcnseg.progress import is_quiet, set_quiet
        from fcnseg.runtime import finish

        parser = build_parser()
    args = parser.parse_args(argv)
    was_quiet = is_quiet()
    quiet = getattr(args, "quiet", False)
    set_quiet(quiet)
    try:
        with messages(args.command, quiet), _terminate_as_interrupt(), interrupts_in_this_process_only():
            code = int(args.func(args) or 0)
            in_a_group = finish()
        if in_a_group:
            _exit_at_once(code)
        return code
    except FcnsegError as error:
        _error_line(printable(f"fcnseg {args.command}: error: {_where()}{user_message(error)}", newlines=True))
        return 2
    except RuntimeError as error:
        from fcnseg.runtime import lost_contact, under_torchrun

        if not lost_contact(error):
            raise
        # gloo's message: "[/path/pair.cc:537] Read error [ADDRESS]: Connection reset by peer. This is ... GLHF!"
        detail = re.sub(r"^\[[^\]]*\]\s*", "", (str(error).strip() or type(error).__name__).splitlines()[0])
        detail = detail.split(". ")[0]
        _error_line(printable(f"fcnseg {args.command}: error: {_where()}lost contact with the other processes of the "
                              f"run (one stopped, was killed or lost its machine; its own message, if any, is above): "
                              f"{detail}"))
        if under_torchrun():
            _leave_after_torchrun_looks()
        return 1
    finally:
        set_quiet(was_quiet)  # main() may be called again in the same process (tests, notebooks)


if __name__ == "__main__":
    entry()
