"""The ``fcnseg`` command: one subcommand per task (train, eval, predict, export, serve, ...).

Errors a user can fix (every :class:`~fcnseg.errors.FcnsegError`) are printed as one line and exit with
code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from fcnseg.commands import COMMANDS
from fcnseg.errors import FcnsegError, user_message
from fcnseg.progress import is_quiet, set_quiet
from fcnseg.runtime import finish


def _unavailable(command: str, error: ImportError):
    def run(args: argparse.Namespace) -> int:
        print(f"fcnseg {command}: error: this command cannot run here: {error}", file=sys.stderr)
        return 2

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for segmentation")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fcnseg.commands.{name}")
        except ImportError as error:  # e.g. an optional dependency is missing: the other commands still work
            command = "eval" if name == "evaluate" else name
            broken = subparsers.add_parser(command, help=f"(unavailable: {error})")
            broken.set_defaults(func=_unavailable(command, error))
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run one subcommand; user errors become one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    was_quiet = is_quiet()
    set_quiet(getattr(args, "quiet", False))
    try:
        code = int(args.func(args) or 0)
        finish()
        return code
    except FcnsegError as error:
        print(f"fcnseg {args.command}: error: {user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130
    finally:
        set_quiet(was_quiet)  # main() may be called again in the same process (tests, notebooks)


if __name__ == "__main__":
    sys.exit(main())
