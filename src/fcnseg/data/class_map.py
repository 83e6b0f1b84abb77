"""Merging and renaming a dataset's classes: the ``class_map`` option every reader takes.

A class map sends each class of the dataset, by name, to a class of a new label set, or to null (the
class is ignored, like void). ``"*"`` stands for every class the map does not name. The new classes are
numbered in the order the map first names them; void stays void. Road / not road from CamVid::

    dataset_options: {class_map: {road: road, "*": not road}}

gives class 0 "road" (CamVid's road) and class 1 "not road" (its ten other classes).

A map is a pure label lookup: :func:`mapped_info` gives the new label set and a 256-entry table from old label
values to new ones, which the dataset pipeline (:class:`fcnseg.data.base.SegmentationDataset`) applies to every
label it loads. Everything else about the dataset (its images, ``inputs``, ``generated``) stays as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from fcnseg.data.info import DatasetInfo, voc_colormap
from fcnseg.errors import ConfigError

EVERY_OTHER = "*"


def mapped_info(info: DatasetInfo, class_map: Mapping[str, str | None]) -> tuple[DatasetInfo, np.ndarray]:
    """(the new label set, a 256-entry lookup table from old label values to new ones) for ``class_map``.

    Names match case-insensitively; a name that is not one of the dataset's classes is a ConfigError
    naming the known ones, as is a map that leaves classes unmapped without ``"*"``.
    """
    if info.extra_heads:
        raise ConfigError(f"class_map works on datasets with one label set; {info.name} has "
                          f"{len(info.heads)} ({', '.join(h.task for h in info.heads)})")
    if not isinstance(class_map, Mapping) or not class_map:
        raise ConfigError(f"class_map must be a mapping of {info.name} class name: new class name (or null), got "
                          f"{class_map!r}")
    index_of = {name.lower(): i for i, name in enumerate(info.class_names)}
    unknown = [str(name) for name in class_map if name != EVERY_OTHER and str(name).lower() not in index_of]
    if unknown:
        raise ConfigError(f"class_map names {', '.join(unknown)}, not classes of {info.name}; its classes: "
                          f"{', '.join(info.class_names)}")
    named = [str(name).lower() for name in class_map]
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:
        raise ConfigError(f"class_map names {', '.join(twice)} more than once (names match whatever their case)")
    targets = _target_names(class_map)
    by_name = {str(name).lower(): target for name, target in class_map.items()}
    unnamed = [n for n in info.class_names if n.lower() not in by_name]
    if unnamed and EVERY_OTHER not in class_map:
        raise ConfigError(f"class_map does not say where {', '.join(unnamed)} go: map them, or add \"*\": NAME "
                          "(or \"*\": null to ignore them)")
    lut = np.arange(256, dtype=np.uint8)  # values that are not classes (void) stay as they are
    for old, name in enumerate(info.class_names):
        target = by_name.get(name.lower(), by_name.get(EVERY_OTHER))
        lut[old] = info.ignore_index if target is None else targets.index(str(target))
    if info.ignore_index < len(targets):
        raise ConfigError(f"class_map gives {len(targets)} classes, but {info.name}'s void value "
                          f"{info.ignore_index} would then be a class")
    return replace(info, name=f"{info.name}:{'/'.join(targets)}", class_names=tuple(targets),
                   palette=_palette(info, targets)), lut


def _target_names(class_map: Mapping[str, Any]) -> list[str]:
    targets: list[str] = []
    for target in class_map.values():
        if target is not None and str(target) not in targets:
            targets.append(str(target))
    if not targets:
        raise ConfigError("class_map ignores every class: name at least one class to keep")
    return targets


def _palette(info: DatasetInfo, targets: list[str]) -> tuple[tuple[int, int, int], ...]:
    """A kept class keeps its colour; a new name gets a VOC colour none of the kept ones uses."""
    colour_of = {name.lower(): colour for name, colour in zip(info.class_names, info.palette, strict=True)}
    used = {colour_of[t.lower()] for t in targets if t.lower() in colour_of}
    spare = iter(c for c in voc_colormap()[1:] if c not in used)
    return tuple(colour_of.get(t.lower()) or next(spare) for t in targets)
