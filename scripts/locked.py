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
    with open(sys.argv[1], "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another install to finish (it holds {sys.argv[1]})", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        return subprocess.call(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
