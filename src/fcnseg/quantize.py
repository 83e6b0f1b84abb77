"""int8 inference: an fcnseg ONNX export quantised with ONNX Runtime's static quantisation.

    path, report = export_int8("runs/camvid/fcn8s/best.pth", "fcn8s-int8.onnx",
                               Calibration("camvid", root="../shared/data/camvid", split="train", images=32))

How: the checkpoint is exported to ONNX (fp32, checked against PyTorch as every export is), then ONNX
Runtime's ``quantize_static`` rewrites it in QDQ form: int8 weights with one scale per output channel, uint8
activations whose ranges are the minima and maxima seen on the calibration images (read through fcnseg's
dataset readers and normalised as the checkpoint says). ONNX Runtime runs the quantised convolutions as
integer kernels. The file carries the usual fcnseg metadata plus ``fcnseg.int8``: that it is int8, how it
was quantised, what it was calibrated on, and how often its labels agreed with the fp32 model's on those
images. ``fcnseg predict`` / ``eval`` / ``serve`` run it like any ONNX export.

The weights are quantised to 7 bits (``reduce_range``): on CPUs without VNNI (AVX2 only) ONNX Runtime's
uint8 x int8 kernels add pairs of products in 16 bits, which 8-bit weights can overflow.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from fcnseg.atomic import atomic_path, remove_abandoned_work_folders, work_folder
from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data.info import DatasetInfo
from fcnseg.data.registry import build_dataset, dataset_options, needs_root
from fcnseg.errors import ConfigError, ExportError
from fcnseg.export import INPUT_NAME, export_onnx, load_onnx, onnx_bytes, require_module
from fcnseg.yamlio import load_yaml, yaml_problem

log = logging.getLogger(__name__)
WORK_PREFIX = ".fcnseg-int8-"  # the intermediate models' folder, beside --out (the same file system)
METHOD = ("ONNX Runtime static quantisation, QDQ: per-channel int8 weights (7-bit range), uint8 activations, "
          "min/max calibration")


@dataclass(frozen=True)
class Calibration:
    """Where the calibration images come from: a dataset reader (``dataset``, ``root``, ``split`` and its
    ``options``), ``images`` of them spread evenly over the split."""

    dataset: str
    root: str | None = None
    split: str = "train"
    images: int = 32
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"calibration needs at least one image, got images={self.images}")


def parse_calibration(pairs: list[str]) -> Calibration:
    """``["dataset=camvid", "root=data/camvid", "split=train", "images=32", "OPTION=VALUE", ...]`` as a
    :class:`Calibration`; keys other than those four are the dataset reader's options."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--calibrate takes KEY=VALUE pairs (dataset=camvid root=PATH ...), got {pair!r}")
        if key in values:  # the last one won without a word
            raise ConfigError(f"--calibrate gives {key}= twice ({values[key]!r} and {value!r}): give it once")
        values[key] = value
    if "dataset" not in values:
        raise ConfigError("--calibrate needs dataset=NAME (and root=PATH): the images int8 ranges are measured on")
    dataset = values.pop("dataset")
    try:
        images = int(values.pop("images", "32"))
    except ValueError:
        raise ConfigError("--calibrate images= takes a whole number") from None
    root, split = values.pop("root", None), values.pop("split", "train")
    options = dataset_options(dataset)  # refuses an unknown dataset
    for key, text in values.items():  # the reader's options as a config gives them: num_images=2 a number
        try:
            values[key] = load_yaml(text) if text.strip() else text
        except yaml.YAMLError as error:
            raise ConfigError(f"--calibrate {key}={text}: the value is not valid YAML: {yaml_problem(error)}") from None
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ConfigError(f"--calibrate: dataset {dataset} has no option(s) {', '.join(unknown)}; its options: "
                          f"{', '.join(options) or 'none'}")
    if root is None and needs_root(dataset):  # the reader's own refusal points at --root, which export lacks
        raise ConfigError(f"--calibrate dataset={dataset} needs root=PATH: the folder holding its files")
    return Calibration(dataset, root, split, images, values)


def calibration_batches(calibration: Calibration, normalization: str, inputs: tuple[str, ...],
                        classes: DatasetInfo | None = None) -> list[np.ndarray]:
    """The calibration images as normalised 1 x C x H x W float32 arrays, spread evenly over the split; a
    warning when their dataset has other classes than ``classes`` (the net's)."""
    options = dict(calibration.options)
    if "inputs" in dataset_options(calibration.dataset):  # NYUDv2: the images the net reads
        options.setdefault("inputs", "+".join(inputs))
    dataset = build_dataset(calibration.dataset, calibration.root, calibration.split, normalization=normalization,
                            **options)
    if classes is not None and list(dataset.info.class_names) != list(classes.class_names):
        # Synthetic scenes for camvid-fcn8s: "97.09% agree" on them, 88-90% on CamVid's frames, mean IU 67.5 -> 53.9.
        log.warning(f"calibrating a net of {classes.name} on images of {dataset.info.name} (other classes): int8's "
                    "ranges then fit other images than the net will see, and the agreement reported is measured on "
                    "the calibration images only; calibrate on the net's own kind of images")
    if len(dataset) == 0:
        raise ConfigError(f"the calibration split {calibration.split} of {calibration.dataset} is empty")
    count = min(calibration.images, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, count).round().astype(int))
    return [dataset[int(i)][0].unsqueeze(0).numpy() for i in indices]


class _Reader:
    """ONNX Runtime's calibration data reader protocol over a list of batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def export_int8(source: str | Path | nn.Module, path: str | Path, calibration: Calibration,
                info: DatasetInfo | None = None, opset: int = 18) -> tuple[Path, dict[str, Any]]:
    """Export a checkpoint (or an FCN with ``info``) as an int8 ONNX model calibrated on ``calibration``.

    Returns the path and the report recorded in the file (``fcnseg.int8``): method, calibration, and the
    share of pixels whose label agrees with the fp32 model's on the calibration images. ``path`` is replaced
    atomically, only once the file has been written and run.
    """
    onnx = require_module("onnx", "ONNX export")
    quantization = require_module("onnxruntime.quantization", "int8 export")
    require_module("onnxruntime.quantization.shape_inference", "int8 export")
    model = source if isinstance(source, nn.Module) else model_from_checkpoint(source)[0]
    spec = model.spec.with_classes(info)
    batches = calibration_batches(calibration, spec.normalization_text, spec.inputs, spec.classes)
    path = Path(path)
    parent = path.parent if path.parent.is_dir() else Path(tempfile.gettempdir())
    remove_abandoned_work_folders(parent, WORK_PREFIX)  # what a killed export left there
    with work_folder(parent, WORK_PREFIX) as work:
        fp32 = export_onnx(model, Path(work) / "fp32.onnx", opset=opset, info=spec.classes)
        prepared, int8 = Path(work) / "prepared.onnx", Path(work) / "int8.onnx"
        with _quiet_quantizer(Path(quantization.__file__).parent):
            # Batch norms folded into their convolutions and shapes inferred first, as ONNX Runtime advises:
            # a folded convolution is quantised once instead of a convolution and a scale.
            quantization.shape_inference.quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            quantization.quantize_static(
                str(prepared), str(int8), _Reader(batches), quant_format=quantization.QuantFormat.QDQ,
                per_channel=True, reduce_range=True, activation_type=quantization.QuantType.QUInt8,
                weight_type=quantization.QuantType.QInt8, calibrate_method=quantization.CalibrationMethod.MinMax)
        proto = onnx.load(str(int8))  # the fp32 file's metadata, with a checksum of the fp32 bytes: made anew
        int8.write_bytes(onnx_bytes(proto))
        # The images it was calibrated on: images= is a most (a split of 200 gives 200 for images=500).
        report = {"precision": "int8", "method": METHOD, "calibration": {**asdict(calibration), "images": len(batches)}}
        report["agreement_with_fp32"] = _agreement(fp32, int8, batches, spec.classes)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "fcnseg.int8", json.dumps(report)
        with atomic_path(path) as tmp:
            tmp.write_bytes(onnx_bytes(proto))
            load_onnx(tmp)  # it opens, has its metadata and its checksum, or nothing replaces ``path``
    return path, report


@contextmanager
def _quiet_quantizer(package: Path) -> Iterator[None]:
    """Drop ONNX Runtime's quantiser advice below ERROR (pre-processing, which is done here) while it runs.

    It logs through the root logger itself (``logging.warning``), so a filter on the root logger drops the
    records logged from files under ``package``; the root logger's level, and everything else logged
    meanwhile, are left alone. Its modules' own loggers sit under ``onnxruntime.quantization``.
    """
    root, own = logging.getLogger(), logging.getLogger("onnxruntime.quantization")
    advice = _FromFolder(package)
    # logging.warning() configures a stderr handler on a root logger that has none (basicConfig): a
    # stand-in keeps the caller's logging as it was.
    stand_in = None if root.handlers else _LastResort()
    saved = own.level
    root.addFilter(advice)
    own.setLevel(logging.ERROR)
    if stand_in is not None:
        root.addHandler(stand_in)
    try:
        yield
    finally:
        if stand_in is not None:
            root.removeHandler(stand_in)
        own.setLevel(saved)
        root.removeFilter(advice)


class _FromFolder(logging.Filter):
    """Drops records below ERROR logged from a file under ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = os.path.join(str(folder), "")  # with its separator: not a sibling named alike

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.folder)


class _LastResort(logging.Handler):
    """Does what logging does when no handler is configured: passes the record to ``logging.lastResort``."""

    def emit(self, record: logging.LogRecord) -> None:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            last.handle(record)


def _agreement(fp32: Path, int8: Path, batches: list[np.ndarray], info: DatasetInfo) -> float:
    """Share of pixels (first head) where the int8 model's label equals the fp32 model's."""
    heads = info.head_classes
    same = total = 0
    exact, _ = load_onnx(fp32, threads=torch.get_num_threads())  # --threads (ONNX Runtime's default: all cores)
    quantised, _ = load_onnx(int8, threads=torch.get_num_threads())
    for batch in batches:
        x = torch.from_numpy(batch)
        a = exact(x)[:, :heads[0]].argmax(1)
        b = quantised(x)[:, :heads[0]].argmax(1)
        same += int((a == b).sum())
        total += a.numel()
    if total == 0:
        raise ExportError("no calibration pixels to compare the int8 model with")
    return same / total
