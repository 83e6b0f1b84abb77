"""Command-line options defined once: runtime flags, inference flags and the flags of a config dataclass.

Flags are generated from dataclass fields (their ``help`` metadata is the help text), so a new option of
:class:`~fcnseg.inference.InferenceOptions` or :class:`~fcnseg.train.TrainConfig` appears on every command
that takes it, with the same name, type and help.

Numbers: every numeric option has a :class:`~fcnseg.ranges.Range`. Plain options take theirs in their argparse
``type`` (:func:`number`); the flags of a dataclass are checked by the dataclass itself against the
``range`` of each field's metadata, so a config file, ``--set`` or the Python API meet the same bounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fcnseg.data.io import DEFAULT_MAX_PIXELS
from fcnseg.errors import ConfigError, unexpanded_home
from fcnseg.inference import InferenceOptions
from fcnseg.memory import parse_size
from fcnseg.pretrained import names as shipped_names
from fcnseg.ranges import COUNT, FRACTION, POSITIVE, Range, check_field
from fcnseg.runtime import DEVICE_CHOICES
from fcnseg.yamlio import load_yaml, yaml_problem

# For the help of commands that take a net: the names fcnseg.pretrained resolves.
SHIPPED_NETS = ", ".join(shipped_names()) or "none"


def number(allowed: Range) -> Callable[[str], float]:
    """argparse type of a numeric option: a number in ``allowed`` (a whole number where it says so); nan, inf
    and values out of the range are usage errors naming the flag, the range and what was given."""

    def parse(text: str) -> float:
        try:
            value = int(text) if allowed.whole else float(text)
        except ValueError:
            value = None
        if value not in allowed:
            raise argparse.ArgumentTypeError(f"expected {allowed.text()}, got {text!r}")
        return value

    parse.__name__ = allowed.text()  # argparse names the type in some messages
    return parse


positive_int = number(COUNT)
positive_float = number(POSITIVE)
fraction = number(FRACTION)


def output_path(text: str) -> Path:
    """argparse type of ``--out``: a path, never an empty one (``--out "$OUT"`` with the variable unset wrote into the
    current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty (an unset shell variable?): give the folder or file to "
                                         "write")
    if problem := unexpanded_home(text):
        raise argparse.ArgumentTypeError(problem)
    return Path(text)


def add_quiet(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars, progress lines or notes (warnings, errors and results still show)")


def add_runtime(parser: argparse.ArgumentParser, device: bool = True) -> None:
    """``--threads``, ``--quiet`` and (with ``device``) ``--device``: the same on every command."""
    if device:
        parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default: auto, a GPU when there "
                                                              "is one)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads (default: the usable cores; data workers use one each)")
    add_quiet(parser)


def add_max_pixels(parser: argparse.ArgumentParser, default: int = DEFAULT_MAX_PIXELS) -> None:
    parser.add_argument("--max-pixels", type=positive_int, default=default,
                        help=f"refuse images with more pixels than this, before decoding (default {default:,})")


def add_max_memory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
                        help="memory one prediction may use, e.g. 6G (default: 80%% of what is available); "
                             "whole images that would need more run in sliding windows, and what fits nowhere "
                             "is refused")


def memory_size(text: str) -> int:
    """argparse type: '8G', '500M', or bytes (more than 0)."""
    try:
        size = parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a size above 0 such as 8G or 500M, got {text!r}")
    return size


def add_inference(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    """The :class:`~fcnseg.inference.InferenceOptions` flags; ``defaults`` change a field's default here."""
    group = parser.add_argument_group("inference")
    add_dataclass_flags(group, InferenceOptions, defaults=defaults, suppress=False)


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The InferenceOptions the flags of :func:`add_inference` describe, each value checked against its field's
    range under the flag's name ("window must be ..." did not say which option)."""
    fields = dataclasses.fields(InferenceOptions)
    for item in fields:
        check_field(item, getattr(args, item.name), "--" + item.name.replace("_", "-"))
    return InferenceOptions(**{item.name: getattr(args, item.name) for item in fields})


def add_dataclass_flags(parser: Any, cls: type, defaults: dict[str, Any] | None = None, suppress: bool = True,
                        skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` flag per field of dataclass ``cls``, typed from its annotation.

    ``suppress``: flags not given are absent from the namespace (so they do not override a config file);
    otherwise they default to the field's default (or ``defaults[name]``).
    """
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        default = (defaults or {}).get(item.name, item.default)
        if default is dataclasses.MISSING:
            default = item.default_factory()
        options = _flag_options(hints[item.name], item.metadata, default)
        options["default"] = argparse.SUPPRESS if suppress else default
        shown = "" if default in (None, False, {}, "") else f" (default: {_show(default)})"
        options["help"] = item.metadata.get("help", "") + shown
        parser.add_argument("--" + item.name.replace("_", "-"), dest=item.name, **options)


def _flag_options(hint: Any, metadata: Any, default: Any) -> dict[str, Any]:
    """argparse keywords for a field of type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    words = origin in (typing.Union, types.UnionType) and str in args  # e.g. numbers or a method's name
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    options: dict[str, Any] = {}
    if "choices" in metadata:
        options["choices"] = metadata["choices"]
    if "metavar" in metadata:
        options["metavar"] = metadata["metavar"]
    if hint is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif origin in (list, tuple) and words:
        options["type"] = _number_or_word
        options["nargs"] = "+"
        options["action"] = _ListOrWord
    elif origin in (list, tuple):
        options["type"] = args[0]
        options["nargs"] = len(metadata["metavar"]) if "metavar" in metadata else "+"
    elif origin is dict or hint is dict:
        options["type"] = yaml_flag
        options["metavar"] = "YAML"
    else:
        options["type"] = hint
    return options


def yaml_flag(text: str) -> Any:
    """argparse type of flags that take YAML (``--dataset-options '{num_images: 8}'``)."""
    try:
        return load_yaml(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid YAML: {yaml_problem(error)}") from None


def _number_or_word(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


class _ListOrWord(argparse.Action):
    """Numbers are stored as a list, one word as itself (``--class-weights median_frequency``)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        words = [v for v in values if isinstance(v, str)]
        if words and len(values) > 1:
            parser.error(f"{option_string} takes numbers or one word, got {' '.join(map(str, values))}")
        setattr(namespace, self.dest, words[0] if words else list(values))


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)
