"""The values an option may take, defined once next to the option and checked the same way whatever sets it (a
command-line flag, a YAML config file, ``--set``, the Python API): its type (:func:`check_type`, for training's
options and the dataset readers' alike), and for numbers a finite one (a whole one where counts are meant)
within bounds. NaN and infinity are never in a range."""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any

from fcnseg.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Finite numbers from ``low`` to ``high`` (None: unbounded); ``above`` / ``below`` leave the bound itself
    out; ``whole``: whole numbers only."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    below: bool = False
    whole: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral if self.whole else numbers.Real):
            return False
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.above and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.below and value == self.high))

    def text(self) -> str:
        """How the range reads in a message: "a whole number of at least 1", "a number in [0, 1)"."""
        kind = "a whole number" if self.whole else "a number"
        if self.low is not None and self.high is not None:
            if not (self.above or self.below):
                return f"{kind} from {_number(self.low)} to {_number(self.high)}"
            return (f"{kind} in {'(' if self.above else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.below else ']'}")
        if self.low is not None:
            return f"{kind} {'above' if self.above else 'of at least'} {_number(self.low)}"
        if self.high is not None:
            return f"{kind} {'below' if self.below else 'of at most'} {_number(self.high)}"
        return f"{kind} (not nan or inf)"

    def check(self, value: Any, name: str) -> Any:
        """``value`` if it is in the range (each item of a list or tuple), else a ConfigError naming ``name``."""
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if item not in self:
                raise ConfigError(f"{name} must be {self.text()}, got {_shown(item)}")
        return value


def check_fields(instance: Any, where: str = "") -> None:
    """Check each field of dataclass ``instance`` that has a ``range`` in its metadata (None passes, and so does
    a word where a field takes numbers or a word); errors name ``where`` then the field."""
    for item in dataclasses.fields(instance):
        check_field(item, getattr(instance, item.name), where + item.name)


def check_field(item: dataclasses.Field, value: Any, name: str) -> None:
    """``value`` against the ``range`` in field ``item``'s metadata, if it has one (see :func:`check_fields`)."""
    allowed = item.metadata.get("range")
    if allowed is not None and value is not None and not isinstance(value, str):
        allowed.check(value, name)


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _shown(value: object) -> str:
    return _number(value) if isinstance(value, float) else repr(value)


# How a type reads in a message (train's options and the dataset readers' alike).
_TYPE_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "a string",
               dict: "a mapping", list: "a list", os.PathLike: "a path"}


def type_name(hint: Any) -> str:
    """How a type hint reads in an error message ("a whole number or null", "a list of numbers")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin is list:
        return f"a list of {type_name(args[0])[2:]}s"
    return _TYPE_NAMES.get(origin or hint, getattr(hint, "__name__", str(hint)))


def check_type(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (ints are accepted as floats, tuples as lists), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return check_type(value, members[0], where)
        for member in members:  # e.g. a list of numbers or a method's name
            try:
                return check_type(value, member, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where} expects {' or '.join(map(type_name, members))}, got {value!r} "
                          f"({type(value).__name__})")
    ok = False
    if origin is list and isinstance(value, list | tuple):
        return [check_type(item, args[0], where) for item in value]
    if origin is dict or hint is dict:
        ok = isinstance(value, dict)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (bool, str):
        ok = isinstance(value, hint)
    elif hint is os.PathLike:  # a reader's folder or file option
        ok = isinstance(value, str | os.PathLike)
    if not ok:
        raise ConfigError(f"{where} expects {type_name(hint)}, got {value!r} ({type(value).__name__})")
    return value


# The ranges options share.
COUNT = Range(1, whole=True)  # iterations, images, threads, sizes in pixels
NON_NEGATIVE_COUNT = Range(0, whole=True)  # workers, warm-up iterations
POSITIVE = Range(0, above=True)  # scales, learning rates, sizes in MB
NON_NEGATIVE = Range(0)  # weight decay, loss weights
FRACTION = Range(0, 1)  # opacity, colour jitter
BELOW_ONE = Range(0, 1, below=True)  # overlap, dropout, momentum
BETWEEN_ZERO_AND_ONE = Range(0, 1, above=True, below=True)  # EMA decay
PORT = Range(0, 65535, whole=True)
SEED = Range(0, 2**32 - 1, whole=True)  # what numpy, torch and Python's random all take
