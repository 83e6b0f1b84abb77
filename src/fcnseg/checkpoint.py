"""Checkpoints that carry everything inference needs: the net's :class:`~fcnseg.models.spec.ModelSpec`.

A checkpoint is a plain dict of tensors and basic Python values (loadable with ``weights_only=True``):

    format: "fcnseg-checkpoint", version: 2,
    spec: ModelSpec.to_dict() (architecture, inputs and their normalisation, input transform, classes),
    model_state_dict: {...},
    and for training runs: optimizer, scheduler, scaler, rng, epoch, iteration, best_mean_iu, config,
    train_state_dict (the training weights, when model_state_dict holds their moving average).

A packed net (:func:`fcnseg.pretrained.pack`: the spec and ``model_state_dict`` alone) stores its weights in
float16; they are read back as float32. Version 1 (``model``: build_model's arguments, ``normalization``,
``dataset``) is still read. A checkpoint is
refused in one line when its weights disagree with its own spec (a missing, extra or mis-shaped tensor) or
are not finite. Writes are atomic (a temporary file in the same folder, then a rename), so a crash never
leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.atomic import atomic_open
from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.errors import WeightsError, require_model_file
from fcnseg.models import build_model
from fcnseg.models.fcn import FCN
from fcnseg.models.spec import ModelSpec, dataset_meta, info_from_meta, spec_from_v1
from fcnseg.models.weights import check_fit, load_torch_file

FORMAT = "fcnseg-checkpoint"
VERSION = 2


def write_checkpoint(data: dict, path: str | Path) -> Path:
    """``torch.save`` a checkpoint dict to a temporary file next to ``path``, then rename it over ``path``."""
    with atomic_open(path) as handle:
        torch.save(data, handle)
    return Path(path)


def unwrap(model: nn.Module) -> FCN:
    """The FCN inside DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def model_checkpoint(model: nn.Module, info: DatasetInfo | None = None, **extra: Any) -> dict:
    """The inference part of a checkpoint (plus any training state passed in ``extra``); ``info`` replaces the
    classes of the net's spec (same class counts)."""
    spec = unwrap(model).spec.with_classes(info)
    state = unwrap(model).state_dict()
    return {"format": FORMAT, "version": VERSION, "spec": spec.to_dict(), "model_state_dict": state, **extra}


def save_model(model: nn.Module, info: DatasetInfo | None, path: str | Path, **extra: Any) -> Path:
    """Write a self-describing checkpoint atomically (``info``: the classes, if the net's spec has none or
    others of the same counts)."""
    return write_checkpoint(model_checkpoint(model, info, **extra), path)


def read_checkpoint(path: str | Path, mmap: bool = False) -> dict:
    """Read an fcnseg checkpoint safely; other kinds of file get a message saying what they are. ``mmap``: map
    the tensors instead of reading them, and leave them in the file's precision (to read the metadata only)."""
    path = require_model_file(path, "checkpoint", (".pth",))
    data = load_torch_file(path, mmap=mmap)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and ("score_fr.weight" in data or "model_state_dict" in data):
            hint = (" It looks like a pytorch-fcn file: load it with "
                    "fcnseg.models.weights.fcn_from_pytorch_fcn or `fcnseg convert`.")
        raise WeightsError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' header).{hint}")
    if not isinstance(data.get("version", 0), int) or data.get("version", 0) > VERSION:
        raise WeightsError(f"{path} was written by a newer fcnseg (checkpoint version {data['version']})")
    if isinstance(data.get("model_state_dict"), dict) and not mmap:
        data["model_state_dict"] = float32_weights(data["model_state_dict"])
    return data


def float32_weights(state: dict) -> dict:
    """``state`` with its floating-point tensors in float32: a packed net (fcnseg.pretrained.pack) stores
    float16, and nets compute in float32 whatever their file holds. Other values are left as they are."""
    return {key: value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value
            for key, value in state.items()}


def checkpoint_spec(data: dict, source: object = "the checkpoint") -> ModelSpec:
    """The spec a checkpoint dict carries (version 2), or that its version-1 entries describe."""
    if data.get("version", 0) >= 2:
        return ModelSpec.from_dict(data.get("spec"), source)
    return spec_from_v1(data.get("model"), data.get("normalization", "imagenet"), data.get("dataset"), source)


def checked_checkpoint(data: dict, source: object = "the checkpoint") -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """(spec, weights) of a checkpoint dict, the weights checked against the spec (names and shapes, on a net
    built on the meta device: no memory) and for finite values; a WeightsError names what disagrees."""
    spec = checkpoint_spec(data, source)
    if spec.classes is None:
        raise WeightsError(f"{source} has no classes in its model spec (class names and palette)")
    state = data.get("model_state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{source} holds no weights (model_state_dict is not a mapping of names to tensors)")
    state = float32_weights(state)
    with torch.device("meta"):
        shapes = build_model(spec).state_dict()
    check_fit(shapes, state, f"{source}: the weights", f"its own spec ({describe(spec)})",
              hint="Was the file edited, or written by another tool?")
    bad = first_not_finite(state)
    if bad is not None:
        raise WeightsError(f"{source}: weight {bad} holds NaN or infinite values (a diverged training or a damaged "
                           "file); use an earlier checkpoint")
    return spec, state


def first_not_finite(state: Mapping[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of ``state`` holding NaN or infinity, or None."""
    return next((key for key, value in state.items() if value.is_floating_point() and not value.isfinite().all()),
                None)


def model_from_checkpoint(source: str | Path | dict) -> tuple[FCN, DatasetInfo]:
    """Rebuild the net a checkpoint's spec describes and load its weights (see :func:`checked_checkpoint`);
    returns (model in eval mode with its ``spec``, its classes)."""
    data = source if isinstance(source, dict) else read_checkpoint(source)
    spec, state = checked_checkpoint(data, "the checkpoint" if isinstance(source, dict) else Path(source))
    model = build_model(spec)
    model.load_state_dict(state, strict=False)  # check_fit allows only BatchNorm's step counters to be absent
    return model.eval(), spec.classes


def describe(spec: ModelSpec) -> str:
    """A few words on a net: ``fcn8s vgg16 width 0.25 reference, 11 classes``."""
    return (f"{spec.name} {spec.backbone} width {spec.width:g} {spec.geometry}, "
            f"{count_text(spec.head_classes)} classes")


__all__ = ["FORMAT", "VERSION", "checked_checkpoint", "checkpoint_spec", "dataset_meta", "describe", "float32_weights",
           "info_from_meta", "model_checkpoint", "model_from_checkpoint", "read_checkpoint", "save_model", "unwrap",
           "write_checkpoint"]
