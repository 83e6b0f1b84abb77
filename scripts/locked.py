"""Run a command while holding an exclusive lock on a file: ``python scripts/locked.py LOCKFILE COMMAND...``.

The Makefile runs its install this way, so that two ``make`` commands started together install one at a time.
The kernel lets the lock go when this process ends, however it ends (Ctrl+C, kill -9): a killed install
never leaves the next one waiting.
"""

import fcntl
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: python scripts/locked.py LOCKFILE COMMAND...", file=sys.stderr)
        return 2
    try:
        handle = open(sys.argv[1], "a")  # noqa: SIM115 - held open, and locked, while the command runs
    except OSError as error:  # a folder that does not exist, a read-only one: one line, not a traceback
        print(f"locked.py: error: cannot open the lock file {sys.argv[1]}: {error.strerror or error}", file=sys.stderr)
        return 2
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another install to finish (it holds {sys.argv[1]})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            return subprocess.call(sys.argv[2:])
        except OSError as error:  # no such command
            print(f"locked.py: error: cannot run {sys.argv[2]}: {error.strerror or error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
