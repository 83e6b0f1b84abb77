"""Benchmarks quick enough to run here are run, so that a renamed config or a changed API breaks a test rather
than the next person who measures."""

import re
import sys

from .helpers import REPO, load_script


def test_the_photometric_benchmark_prints_a_row_per_step_and_per_pipeline(monkeypatch, capsys):
    bench = load_script(REPO / "benchmarks" / "photometric.py")
    monkeypatch.setattr(sys, "argv", ["photometric.py", "--repeats", "1"])
    bench.main()
    row = re.compile(r"\| (.+) \| [\d.]+ \| [\d.]+ \|")  # name, CPU ms, wall ms
    rows = [row.fullmatch(line) for line in capsys.readouterr().out.splitlines()]
    names = [match.group(1) for match in rows if match]
    assert names == [*bench.STEPS, *(f"the training transform of {path.name}" for path in bench.CONFIGS)]
