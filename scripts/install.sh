#!/bin/sh
# make install's steps, run by the Makefile under a lock on .venv.lock (scripts/locked.py): `make demo` and
# `make test` started together on a fresh clone would otherwise run two pips in one venv and break it. The
# second one waits for the lock, then finds the venv installed and does nothing.
# Usage: sh scripts/install.sh PYTHON VENV
set -eu
python=$1
venv=$2
stamp=$venv/.installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi
"$python" -m venv "$venv"
# torch is pinned to the tested CPU build first: a bare `torch` pulls GBs of CUDA packages.
"$venv/bin/pip" install -q torch==2.13.0
"$venv/bin/pip" install -q -e ".[dev]"
touch "$stamp"
