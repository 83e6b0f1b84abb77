"""The code's shape: no import cycle among fcnseg's modules, short functions, one error family."""

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
from pathlib import Path

import fcnseg
from fcnseg.errors import FcnsegError

SOURCE = Path(fcnseg.__file__).parent
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """fcnseg modules ``name`` imports anywhere (inside functions too); ``from p import m`` counts as p.m
    when m is a module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_counting_imports_inside_functions():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert "fcnseg.evaluate" in graph["fcnseg.train.loop"]  # the walk sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_no_function_is_longer_than_80_lines():
    # The library's modules, and the scripts and benchmarks beside it (held to the same bar).
    repo = Path(__file__).resolve().parents[1]
    tools = [*sorted((repo / "scripts").glob("*.py")), *sorted((repo / "benchmarks").glob("*.py")), repo / "hubconf.py"]
    assert len(tools) > 20 and all(path.is_file() for path in tools), tools
    long = []
    for name, path in [*MODULES.items(), *((str(path.relative_to(repo)), path) for path in tools)]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


def test_every_exception_class_is_an_fcnseg_error():
    classes = []
    for info in pkgutil.walk_packages(fcnseg.__path__, "fcnseg."):
        module = importlib.import_module(info.name)
        classes += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if cls.__module__ == info.name and issubclass(cls, BaseException)]
    assert len(classes) >= 8
    assert [cls.__name__ for cls in classes if not issubclass(cls, FcnsegError)] == []


# `test_file.py::test_name` in the docs, and `::test_name` after it meaning the same file: the tests that show a
# documented case (docs/RELIABILITY.md names one per row); a renamed or removed test would leave a dangling name.
_NAMED_TEST = re.compile(r"`(?:tests/(?:models/)?)?(test_\w+\.py)?::(\w+)(?:\[[^\]]*\])?`")


def _named_tests(text: str) -> list[tuple[str, str]]:
    named, file = [], None
    for match in _NAMED_TEST.finditer(text):
        file = match.group(1) or file
        named.append((file, match.group(2)))
    return named


def test_every_test_the_docs_name_exists():
    tests = Path(__file__).parent
    defined = {path.name: {node.name for node in ast.walk(ast.parse(path.read_text()))
                           if isinstance(node, ast.FunctionDef | ast.ClassDef)}
               for path in tests.rglob("test_*.py")}
    docs = [tests.parent / "README.md", *sorted((tests.parent / "docs").rglob("*.md"))]
    named = [(doc.name, *test) for doc in docs for test in _named_tests(doc.read_text())]
    assert len(named) > 100  # the pattern still finds docs/RELIABILITY.md's names
    dangling = [f"{doc}: {file}::{name}" for doc, file, name in named if name not in defined.get(file, ())]
    assert dangling == []
    assert _named_tests("`test_a.py::test_b[x]`, `::test_c`") == [("test_a.py", "test_b"), ("test_a.py", "test_c")]
