"""What a net *is*: :class:`ModelSpec`, one frozen value that builds the net and travels with its weights.

Everything the function a set of weights computes depends on lives here: the architecture (model, backbone,
width, geometry, upsampling, dropout, extra heads), what the net reads (``inputs``) and how each input is
normalised (parsed, one entry per input), a backbone's own input transform (torchvision's GoogLeNet
re-normalisation), and the classes it scores (names, palette, ignore index). ``build_model(spec)`` builds
the net from it; checkpoints, ONNX and TorchScript exports store ``spec.to_dict()`` and ``fcnseg.load``
rebuilds the net with :meth:`ModelSpec.from_dict`. Ways of making a net (ImageNet weights, the authors'
weights, surgery) return a new spec with ``dataclasses.replace`` instead of changing a built net.

Version 2 is this layout; version 1 checkpoints and exports (``model`` / ``normalization`` / ``dataset``
keys, no input transform) are read by :func:`spec_from_v1`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.errors import ConfigError, WeightsError
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.fcn import GEOMETRIES
from fcnseg.normalization import check_normalization, split_normalization
from fcnseg.ranges import BELOW_ONE, POSITIVE, Range

SPEC_VERSION = 2

# What a net can read: a colour image, and the HHA encoding of a depth map (fcnseg.data.hha).
INPUTS = ("rgb", "hha")

# Model name -> head. The at-once FCN-8s is the same graph with scaled skip inputs.
MODELS = {
    "fcn32s": "32s",
    "fcn16s": "16s",
    "fcn8s": "8s",
    "fcn8s_atonce": "8s_atonce",
}
# The backbones an input transform applies to (torchvision trained its GoogLeNet on mean 0.5 / std 0.5).
TRANSFORM_INPUT_BACKBONES = ("googlenet",)
# build_model's architecture arguments, in the order ModelSpec declares them.
ARCHITECTURE = ("name", "backbone", "num_classes", "width", "geometry", "learnable_upsampling", "dropout",
                "extra_heads", "inputs")


@dataclass(frozen=True)
class ModelSpec:
    """One net: architecture, inputs and their normalisation, input transform, classes. Checked on creation
    (a :class:`~fcnseg.errors.ConfigError` names the bad field); equal specs build nets computing the same
    function from the same weights.

    ``normalization`` may be given as one string for every input (``"imagenet"``), a ``+``-joined string
    (``"caffe:116,97,92+hha:132,94,118"``) or a sequence; it is kept as a tuple, one entry per input.
    ``classes``: the label set(s) the net scores (None for a bare architecture); its heads' class counts must
    be ``(num_classes, *extra_heads)``.
    """

    name: str = "fcn8s"
    backbone: str = "vgg16"
    num_classes: int = 21
    width: float = 1.0
    geometry: str = "reference"
    learnable_upsampling: bool = False
    dropout: float = 0.5
    extra_heads: tuple[int, ...] = ()
    inputs: tuple[str, ...] = ("rgb",)
    normalization: tuple[str, ...] = ()
    transform_input: bool = False
    classes: DatasetInfo | None = None

    def __post_init__(self) -> None:
        set_field = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731 - frozen
        _check_types(self)
        set_field("extra_heads", tuple(int(c) for c in self.extra_heads))  # checked whole: numpy's ints as int
        set_field("learnable_upsampling", bool(self.learnable_upsampling))
        set_field("transform_input", bool(self.transform_input))
        set_field("inputs", tuple(self.inputs))
        set_field("normalization", _per_input(self.normalization, len(self.inputs)))
        _check_architecture(self)
        if self.transform_input and self.backbone not in TRANSFORM_INPUT_BACKBONES:
            raise ConfigError(f"transform_input applies to {', '.join(TRANSFORM_INPUT_BACKBONES)}, not {self.backbone}")
        if self.classes is not None and self.classes.head_classes != self.head_classes:
            raise ConfigError(f"{self.classes.name} has {count_text(self.classes.head_classes)} classes but the net "
                              f"scores {count_text(self.head_classes)}")

    @property
    def head_classes(self) -> tuple[int, ...]:
        """Classes per head: the output's channels, head after head."""
        return (self.num_classes, *self.extra_heads)

    @property
    def channels(self) -> int:
        """Input channels: 3 per input (colour, HHA)."""
        return 3 * len(self.inputs)

    @property
    def normalization_text(self) -> str:
        """The normalisation as one string (``+`` between inputs), as :func:`~fcnseg.normalization.normalize`
        takes it."""
        return "+".join(self.normalization)

    def architecture(self) -> dict[str, Any]:
        """build_model's keyword arguments: what decides the layers and their shapes (every key, always)."""
        return {field: getattr(self, field) for field in ARCHITECTURE}

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with ``changes`` (checked like a new spec)."""
        return dataclasses.replace(self, **changes)

    def with_classes(self, info: DatasetInfo | None) -> ModelSpec:
        """This spec scoring ``info``'s classes (same class counts, else a ConfigError); None keeps its own.
        A spec without classes either way is a ConfigError: a checkpoint or export must name them."""
        spec = self if info is None or info == self.classes else self.replace(classes=info)
        if spec.classes is None:
            raise ConfigError("the net's spec has no classes: pass info=DatasetInfo(...) (class names and palette)")
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Plain values (str, int, float, bool, lists, dicts) for a checkpoint or an export's metadata."""
        values = self.architecture()
        values.update(extra_heads=list(self.extra_heads), inputs=list(self.inputs),
                      normalization=list(self.normalization), transform_input=self.transform_input)
        return {"version": SPEC_VERSION, **values,
                "dataset": dataset_meta(self.classes) if self.classes is not None else None}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: object = "the model") -> ModelSpec:
        """The spec :meth:`to_dict` wrote; anything else (a newer version, a missing or ill-typed field, bad
        classes) is a :class:`~fcnseg.errors.WeightsError` naming ``source`` and the field."""
        if not isinstance(values, Mapping):
            raise WeightsError(f"{source}: its model spec is not a mapping")
        version = values.get("version")
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise WeightsError(f"{source}: model spec version {version!r} is not one this fcnseg reads "
                               f"(up to {SPEC_VERSION}; a newer fcnseg wrote it?)")
        fields = {f.name for f in dataclasses.fields(cls)} - {"classes"}
        unknown = sorted(set(values) - fields - {"version", "dataset"})
        if unknown:
            raise WeightsError(f"{source}: unknown model spec field(s) {', '.join(unknown)}")
        kwargs = {key: value for key, value in values.items() if key in fields}
        dataset = values.get("dataset")
        return _checked(cls, kwargs, None if dataset is None else info_from_meta(dataset, source), source)


def _checked(cls: type[ModelSpec], kwargs: dict[str, Any], classes: DatasetInfo | None,
             source: object) -> ModelSpec:
    """``cls(**kwargs, classes=classes)`` with the types of stored values checked; errors name ``source``."""
    types = {"name": str, "backbone": str, "num_classes": int, "width": (int, float), "geometry": str,
             "learnable_upsampling": bool, "dropout": (int, float), "transform_input": bool}
    for key, expected in types.items():
        value = kwargs.get(key)
        if key in kwargs and (not isinstance(value, expected) or (expected is int and isinstance(value, bool))):
            raise WeightsError(f"{source}: model spec field {key} is {value!r}, not a {_type_name(expected)}")
    for key in ("extra_heads", "inputs", "normalization"):
        if key in kwargs and (isinstance(kwargs[key], str | bytes) or not isinstance(kwargs[key], Sequence)):
            if key != "normalization" or not isinstance(kwargs[key], str):
                raise WeightsError(f"{source}: model spec field {key} is {kwargs[key]!r}, not a list")
    try:
        return cls(**kwargs, classes=classes)
    except (ConfigError, TypeError, ValueError) as error:
        raise WeightsError(f"{source}: {error}") from None


def _type_name(expected: type | tuple[type, ...]) -> str:
    words = {"str": "string", "bool": "true/false", "int": "whole number"}  # "not a int" read badly
    return "number" if isinstance(expected, tuple) else words.get(expected.__name__, expected.__name__)


def _per_input(normalization: str | Sequence[str], inputs: int) -> tuple[str, ...]:
    """One checked normalisation string per input; empty means ImageNet's for every input."""
    if not normalization:
        return ("imagenet",) * inputs
    kinds = split_normalization(normalization) if isinstance(normalization, str) else tuple(normalization)
    for kind in kinds:
        check_normalization(kind)
    if len(kinds) == 1:
        return kinds * inputs
    if len(kinds) != inputs:
        raise ConfigError(f"normalization {'+'.join(kinds)!r} names {len(kinds)} inputs, but the net reads {inputs}")
    return kinds


_WHOLE = Range(whole=True)  # any whole number (num_classes: the count is checked on its own)


def _check_types(spec: ModelSpec) -> None:
    """ConfigError for a field of the wrong kind, before it is converted: ``extra_heads=3`` is not a list of
    class counts, ``2.5`` in it is no count (int() made it 2), "yes" is not a bool (it failed deep in torch)."""
    for field in ("learnable_upsampling", "transform_input"):
        if not isinstance(getattr(spec, field), bool | np.bool_):
            raise ConfigError(f"{field} must be True or False, got {getattr(spec, field)!r}")
    heads = spec.extra_heads
    if isinstance(heads, str | bytes | Mapping) or not isinstance(heads, Sequence | np.ndarray) or \
            not all(count in _WHOLE for count in heads):
        raise ConfigError(f"extra_heads must be a list of class counts (whole numbers), e.g. [3], got {heads!r}")
    if isinstance(spec.inputs, str):
        raise ConfigError(f"inputs must be a list of names from {INPUTS}, e.g. [{spec.inputs!r}], got {spec.inputs!r}")
    if spec.classes is not None and not isinstance(spec.classes, DatasetInfo):
        raise ConfigError(f"classes must be a DatasetInfo (fcnseg.data.info: names and palette) or None, got "
                          f"{spec.classes!r}")


def _check_architecture(spec: ModelSpec) -> None:
    """ConfigError for a name, backbone, geometry or number out of range."""
    if spec.name not in MODELS:
        raise ConfigError(f"unknown model {spec.name!r}; choose one of {sorted(MODELS)}")
    if spec.backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {spec.backbone!r}; choose one of {sorted(BACKBONES)}")
    if spec.geometry not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {spec.geometry!r}; choose one of {GEOMETRIES}")
    # Membership of the options' ranges (fcnseg.ranges): a number, not a bool, a string, nan or inf.
    if spec.width not in POSITIVE:
        raise ConfigError(f"width must be positive, got {spec.width!r}")
    if spec.dropout not in BELOW_ONE:
        raise ConfigError(f"dropout must be in [0, 1), got {spec.dropout!r}")
    if not all(count in _WHOLE for count in spec.head_classes):
        # 21.5 reached the classifier's convolution ("out_channels must be divisible by groups"), "21" a comparison
        raise ConfigError(f"num_classes must be a whole number, got {', '.join(map(repr, spec.head_classes))}")
    if min(spec.head_classes) < 1:
        raise ConfigError(f"every head needs at least one class, got {spec.head_classes}")
    if not spec.inputs or len(set(spec.inputs)) != len(spec.inputs) or not set(spec.inputs) <= set(INPUTS):
        raise ConfigError(f"inputs must be distinct names from {INPUTS}, got {spec.inputs}")


# ---------------------------------------------------------------------------------- classes as plain values
def dataset_meta(info: DatasetInfo) -> dict:
    """``info`` as plain values (the fields of several heads and scoring only where they are set)."""
    meta = {"name": info.name, "class_names": list(info.class_names), "palette": [list(c) for c in info.palette],
            "ignore_index": info.ignore_index}
    if info.task != "semantic":
        meta["task"] = info.task
    if info.extra_heads:
        meta["extra_heads"] = [dataset_meta(head) for head in info.extra_heads]
    if info.exclude_absent:
        meta["exclude_absent"] = True
    return meta


def info_from_meta(meta: Any, source: object = "the model") -> DatasetInfo:
    """The :class:`DatasetInfo` :func:`dataset_meta` wrote, each value checked (names are strings, one colour
    of three 0-255 integers per class); a bad value is a WeightsError naming ``source`` and the value."""
    if not isinstance(meta, Mapping):
        raise WeightsError(f"{source} has no class metadata (a 'dataset' entry with class names and palette)")
    names, palette = meta.get("class_names"), meta.get("palette")
    if not isinstance(names, Sequence) or isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise WeightsError(f"{source}: class names must be a list of strings, got {names!r:.80}")
    if not isinstance(palette, Sequence) or len(palette) != len(names):
        count = len(palette) if isinstance(palette, Sequence) else palette
        raise WeightsError(f"{source}: {len(names)} class names but {count!r:.40} palette colours")
    for colour in palette:
        if not (isinstance(colour, Sequence) and len(colour) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in colour)):
            raise WeightsError(f"{source}: palette colour {colour!r:.40} is not three integers from 0 to 255")
    ignore, heads = meta.get("ignore_index", 255), meta.get("extra_heads", ())
    if not isinstance(ignore, int) or not isinstance(meta.get("name"), str) or not isinstance(heads, Sequence):
        raise WeightsError(f"{source}: damaged class metadata (name {meta.get('name')!r:.40}, ignore index "
                           f"{ignore!r:.20})")
    return DatasetInfo(meta["name"], tuple(names), tuple(tuple(c) for c in palette), ignore,
                       task=str(meta.get("task", "semantic")),
                       extra_heads=tuple(info_from_meta(head, source) for head in heads),
                       exclude_absent=bool(meta.get("exclude_absent", False)))


def spec_from_v1(model: Any, normalization: Any, dataset: Any, source: object = "the model") -> ModelSpec:
    """The spec of a version-1 checkpoint or export: build_model's arguments (``model``), one normalisation
    string, the dataset metadata. Version 1 stored no input transform: none is assumed (as it then loaded)."""
    if not isinstance(model, Mapping):
        raise WeightsError(f"{source} has no model description (its 'model' entry)")
    unknown = sorted(set(model) - set(ARCHITECTURE))
    if unknown:
        raise WeightsError(f"{source}: unknown model field(s) {', '.join(map(str, unknown))}")
    if not isinstance(normalization, str):
        raise WeightsError(f"{source}: normalization is {normalization!r:.40}, not a string")
    return _checked(ModelSpec, {**model, "normalization": normalization}, info_from_meta(dataset, source), source)
