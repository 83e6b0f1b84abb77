"""The scripts and benchmarks take counts (threads, rounds, sizes) through the CLI's own argparse type, so
that 0 or a word is one usage line, as in fcnseg's commands, not a traceback from torch or statistics."""

import re

from .helpers import REPO

# Options of these names are counts that must be at least 1.
COUNTS = ("threads", "runs", "rounds", "repeats", "steps", "rows", "size", "batch", "images", "calibration-images")


def test_no_script_or_benchmark_takes_a_count_as_a_bare_int():
    found = []
    for path in sorted([*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]):
        for line in path.read_text().splitlines():
            option = re.search(r'add_argument\("--([\w-]+)"', line)
            if option and option.group(1) in COUNTS and "type=int" in line:
                found.append(f"{path.name}: {line.strip()}")
    assert not found, found


def test_the_scan_sees_the_options_it_checks():
    # The scan above would pass on nothing: make sure it reads lines of the shape it looks for.
    line = 'parser.add_argument("--threads", type=positive_int, default=1)'
    assert re.search(r'add_argument\("--([\w-]+)"', line).group(1) == "threads"
    text = (REPO / "benchmarks" / "train_step.py").read_text()
    assert 'add_argument("--threads", type=positive_int' in text
