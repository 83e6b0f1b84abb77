"""Checkpoints that carry everything inference needs: architecture, classes, palette, normalisation.

A checkpoint is a plain dict of tensors and basic Python values (loadable with ``weights_only=True``):

    format: "fcnseg-checkpoint", version: 1,
    model: {"name", "backbone", "num_classes", "width", "geometry", "learnable_upsampling"},
    normalization: "imagenet" | "caffe",
    dataset: {"name", "class_names", "palette", "ignore_index"},
    model_state_dict: {...},
    and for training runs: optimizer, scheduler, scaler, rng, epoch, iteration, best_mean_iu, config.

Writes are atomic (a temporary file in the same folder, then a rename), so a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.atomic import atomic_open
from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.errors import WeightsError
from fcnseg.models import build_model
from fcnseg.models.fcn import FCN
from fcnseg.models.weights import load_torch_file

FORMAT = "fcnseg-checkpoint"
VERSION = 1


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


def info_from_meta(meta: dict) -> DatasetInfo:
    return DatasetInfo(meta["name"], tuple(meta["class_names"]), tuple(tuple(c) for c in meta["palette"]),
                       meta.get("ignore_index", 255), task=meta.get("task", "semantic"),
                       extra_heads=tuple(info_from_meta(head) for head in meta.get("extra_heads", ())),
                       exclude_absent=meta.get("exclude_absent", False))


def model_checkpoint(model: nn.Module, info: DatasetInfo, **extra: Any) -> dict:
    """The inference part of a checkpoint (plus any training state passed in ``extra``)."""
    fcn = unwrap(model)
    if info.head_classes != fcn.head_classes:
        raise WeightsError(f"dataset {info.name} has {count_text(info.head_classes)} classes, the model "
                           f"{count_text(fcn.head_classes)}")
    return {"format": FORMAT, "version": VERSION, "model": dict(fcn.config),
            "normalization": fcn.backbone.input_normalization, "dataset": dataset_meta(info),
            "model_state_dict": fcn.state_dict(), **extra}


def save_model(model: nn.Module, info: DatasetInfo, path: str | Path, **extra: Any) -> Path:
    """Write a self-describing checkpoint atomically."""
    return write_checkpoint(model_checkpoint(model, info, **extra), path)


def read_checkpoint(path: str | Path) -> dict:
    """Read an fcnseg checkpoint safely; other kinds of file get a message saying what they are."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    data = load_torch_file(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = ""
        if isinstance(data, dict) and ("score_fr.weight" in data or "model_state_dict" in data):
            hint = (" It looks like a pytorch-fcn file: load it with "
                    "fcnseg.models.weights.fcn_from_pytorch_fcn or `fcnseg convert`.")
        raise WeightsError(f"{path} is not an fcnseg checkpoint (no '{FORMAT}' header).{hint}")
    if data.get("version", 0) > VERSION:
        raise WeightsError(f"{path} was written by a newer fcnseg (checkpoint version {data['version']})")
    return data


def model_from_checkpoint(source: str | Path | dict) -> tuple[FCN, DatasetInfo]:
    """Rebuild the model a checkpoint describes and load its weights; returns (model in eval mode, info)."""
    data = source if isinstance(source, dict) else read_checkpoint(source)
    model = build_model(**data["model"])
    model.load_state_dict(data["model_state_dict"])
    model.backbone.input_normalization = data.get("normalization", "imagenet")
    return model.eval(), info_from_meta(data["dataset"])
