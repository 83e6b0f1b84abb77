"""The scripts and benchmarks take counts (threads, rounds, sizes) through the CLI's own argparse type, so
that 0 or a word is one usage line, as in fcnseg's commands, not a traceback from torch or statistics."""

import ast

from .helpers import REPO

# Options of these names are counts that must be at least 1.
COUNTS = ("threads", "runs", "rounds", "repeats", "steps", "rows", "size", "batch", "images", "calibration-images")
TOOLS = sorted([*(REPO / "scripts").glob("*.py"), *(REPO / "benchmarks").glob("*.py")])


def count_options(path) -> list[tuple[str, str]]:
    """(option, the name of its ``type=``) of every ``add_argument("--COUNT", ...)`` call in ``path``, however
    the call is laid out over lines."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument" and node.args and isinstance(node.args[0], ast.Constant)):
            continue
        option = str(node.args[0].value)
        if option.removeprefix("--") in COUNTS:
            kind = next((keyword.value for keyword in node.keywords if keyword.arg == "type"), None)
            found.append((option, ast.unparse(kind) if kind is not None else "str"))
    return found


def test_no_script_or_benchmark_takes_a_count_as_a_bare_int():
    found = [f"{path.name}: {option} type={kind}" for path in TOOLS for option, kind in count_options(path)
             if kind == "int"]
    assert not found, found


def test_the_scan_sees_the_options_it_checks():
    # The scan above would pass on nothing: make sure it finds the calls it looks for.
    assert ("--threads", "positive_int") in count_options(REPO / "benchmarks" / "train_step.py")
    assert sum(len(count_options(path)) for path in TOOLS) > 20
