"""Reading YAML as a config means it: the one loader of training configs, ``--set`` values, YAML flags and
``--calibrate`` options.

PyYAML follows YAML 1.1, whose readings surprise a config's author; this loader reads as YAML 1.2 and every user
mean it: ``1e-4`` is a number (1.1 wants ``1.0e-4`` and reads a string), ``010`` is 10 (1.1: octal 8), ``1:30``
is text (1.1: sexagesimal 90), so are ``yes``, ``no``, ``on`` and ``off`` (1.1: booleans; 1.2's are
``true`` and ``false``), and a key given twice in one mapping is an error (PyYAML keeps the last without a
word). It stays safe: plain values only, no objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from fcnseg.errors import ConfigError

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_BOOL = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's numbers and booleans, and no repeated keys (see the module's doc)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:  # "<<": keys given beside a merge override it, as YAML means
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader's own error says so
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found the key {key!r} twice (first on line {first_line[key]}): give it once",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _whole_number(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 16) if text.lower().lstrip("+-").startswith("0x") else int(text, 10)


# YAML 1.1's int forms (octal, binary, sexagesimal) and booleans (yes, no, on, off: a class named "no" is text)
# out; 1.2's decimal and hexadecimal ints, exponent floats without a dot, and true / false in.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9][0-9_]*$|^[-+]?0x[0-9a-fA-F_]+$"), list("-+0123456789"))
_Loader.add_constructor(_INT, _whole_number)
_Loader.add_implicit_resolver(_FLOAT, re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, quoting every string the loader here would read as something else (``1e5``, which
    YAML 1.1 and so PyYAML's dumper take for text)."""


def _string(dumper: _Dumper, value: str) -> yaml.ScalarNode:
    try:
        read_back = load_yaml(value)
    except yaml.YAMLError:
        read_back = None  # not plain YAML: the dumper quotes it by itself
    quoted = not isinstance(read_back, str) or read_back != value
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'" if quoted else None)


_Dumper.add_representer(str, _string)


def dump_yaml(data: Any) -> str:
    """``data`` (plain values) as YAML text that :func:`load_yaml` reads back as the same values, keys in order."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def load_yaml(text: str) -> Any:
    """YAML ``text`` as Python values, read as the module's doc says."""
    return yaml.load(text, Loader=_Loader)


def yaml_problem(error: yaml.YAMLError, line: bool = False) -> str:
    """A YAML parse error on one line: what is wrong and where (PyYAML spreads it over several); ``line``: say
    the line too (a file's text, not a flag's)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return problem
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if line else \
        f"{problem} (column {mark.column + 1})"


def read_yaml_file(path: Path, what: str) -> Any:
    """The YAML file ``path`` as Python values; one line naming ``what`` and the file when it cannot be read or
    parsed."""
    try:
        return load_yaml(path.read_text())
    except OSError as error:
        raise ConfigError(f"cannot read {what} {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read {what} {path}: it is not text (a YAML file is)") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(error, line=True)}") from None
