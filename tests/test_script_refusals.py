"""The helper scripts and benchmarks refuse bad arguments as fcnseg's commands do: one line, exit code 2 (found by a
hostile review: shell error text with exit 1, tracebacks, an unknown flag ignored and the benchmark run)."""

import os
import subprocess
import sys

import pytest

from .helpers import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(argv):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)


@pytest.mark.parametrize("arguments, said", [
    ([], "usage: scripts/keep_snapshots.sh RUN_DIR SNAP_DIR"),
    (["RUN"], "usage: scripts/keep_snapshots.sh RUN_DIR SNAP_DIR"),
    (["RUN", "FILE"], "is a file, not a folder"),
])
def test_keep_snapshots_refuses_in_one_line(tmp_path, arguments, said):
    (tmp_path / "run").mkdir()
    (tmp_path / "file").write_text("mine")
    given = [{"RUN": str(tmp_path / "run"), "FILE": str(tmp_path / "file")}[a] for a in arguments]
    result = _run(["bash", "scripts/keep_snapshots.sh", *given])
    assert result.returncode == 2 and said in result.stderr and result.stderr.count("\n") == 1
    assert (tmp_path / "file").read_text() == "mine"


@pytest.mark.parametrize("arguments, said", [
    (["/nonexistent/x.lock", "true"], "cannot open the lock file /nonexistent/x.lock"),
    (["LOCK", "no-such-command-here"], "cannot run no-such-command-here"),
])
def test_locked_refuses_in_one_line(tmp_path, arguments, said):
    given = [str(tmp_path / "l.lock") if a == "LOCK" else a for a in arguments]
    result = _run([sys.executable, "scripts/locked.py", *given])
    assert result.returncode == 2 and result.stderr.strip().endswith(said.split()[-1] + ": No such file or directory")
    assert said in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv, said", [
    (["benchmarks/argmax.py", "--bogus"], "unrecognized arguments: --bogus"),
    (["benchmarks/slide_quality.py", "/nonexistent.pth"], "slide_quality.py: error: model file not found"),
    (["benchmarks/denormals.py", "/nonexistent.pth"], "denormals.py: error: checkpoint not found"),
])
def test_benchmarks_refuse_in_one_line(tmp_path, argv, said):
    result = _run([sys.executable, *argv])
    assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr
