"""Deployment: export an FCN to ONNX or TorchScript with everything inference needs, and load it back.

An exported file maps a normalised ``N x 3 x H x W`` float32 ``image`` to ``N x C x H x W`` ``logits`` for
any batch size and any ``H, W >= 1``, exactly as the PyTorch model does, and carries the dataset metadata
(class names, palette, ignore index), the input normalisation and the model config: ONNX files as
``metadata_props`` (JSON strings under ``fcnseg.*`` keys), TorchScript archives as the extra file
``fcnseg.json``. ``load_onnx`` / ``load_torchscript`` rebuild the ``(forward, info, normalization)`` triple that
``fcnseg.api.Segmenter`` takes (``fcnseg.load(path, backend="onnxruntime")``).

Which ONNX exporter, and why: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``).
Both exporters give outputs equal to PyTorch's (< 1e-6) at untraced sizes for every backbone, head and
geometry (the FCN's input-padding branch depends on constants only, so tracing keeps it), but the dynamo
exporter (torch 2.13) fails outright on some models (GoogLeNet FCN-32s/16s, fast geometry: an internal
``AssertionError`` in torch.export's shape solver on the ceil-mode pooling guards), needs ``onnxscript``, and
takes 10-50x longer (6-60 s vs 0.2-1 s for a width-1/16 net). Worse, on a size guard it cannot prove it
silently *refines* the dynamic shapes from torch.export's suggested fixes: the plain fast-geometry model
exported without an error yet was wrong at sizes that are not multiples of 32. The tracer has the same blind
spot (a Python branch on a size is recorded as a constant, with only a ``TracerWarning``), so every export is
checked against the PyTorch model at an untraced size before it replaces the destination file.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.atomic import atomic_open, atomic_path
from fcnseg.checkpoint import dataset_meta, info_from_meta, model_from_checkpoint, unwrap
from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.errors import ConfigError, ExportError, WeightsError
from fcnseg.models.fcn import FCN
from fcnseg.models.weights import file_kind
from fcnseg.normalization import check_normalization

FORMAT = "fcnseg-export"
VERSION = 1
INPUT_NAME, OUTPUT_NAME = "image", "logits"
TORCHSCRIPT_EXTRA_FILE = "fcnseg.json"
# Traced at one size and batch, verified at another: a size or batch baked into the graph shows up as a
# wrong or failing output instead of a silently broken file (37 x 53 shares no residue mod 32 with 64).
TRACE_SHAPE = (1, 3, 64, 64)
VERIFY_SHAPE = (2, 3, 37, 53)


def require_module(module: str, purpose: str):
    """Import an optional dependency (``onnx``, ``onnxruntime.quantization``), or say which package to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise ExportError(f"{purpose} needs the '{package}' package: pip install {package}") from None


# ------------------------------------------------------------------------------------------ the model side
@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode for the export, the caller's mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _resolve(source: str | Path | nn.Module, info: DatasetInfo | None,
             normalization: str | None) -> tuple[FCN, DatasetInfo, str]:
    """(model, info, normalization) from a checkpoint path or an FCN module."""
    if isinstance(source, nn.Module):
        if info is None:
            raise ConfigError("exporting a module needs info=DatasetInfo(...) (class names and palette); "
                             "or export a checkpoint file, which carries them")
        model = unwrap(source)
        if not isinstance(model, FCN):
            raise ConfigError(f"expected an fcnseg FCN, got {type(model).__name__}")
    else:
        model, checkpoint_info = model_from_checkpoint(source)
        info = info or checkpoint_info
    if not hasattr(model, "config"):
        raise ConfigError("the model has no .config (build it with fcnseg.models.build_model) so the export "
                         "could not record its architecture")
    if info.head_classes != model.head_classes:
        raise ConfigError(f"dataset {info.name} has {count_text(info.head_classes)} classes, the model "
                          f"{count_text(model.head_classes)}")
    normalization = normalization or model.backbone.input_normalization
    check_normalization(normalization)
    return model, info, normalization


def _metadata(model: FCN, info: DatasetInfo, normalization: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "model": dict(model.config), "normalization": normalization,
            "dataset": dataset_meta(info)}


def _from_metadata(meta: dict[str, Any], path: Path) -> tuple[DatasetInfo, str, dict]:
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} has no fcnseg metadata: export it with `fcnseg export CHECKPOINT ...`")
    if meta.get("version", 0) > VERSION:
        raise WeightsError(f"{path} was written by a newer fcnseg (export version {meta['version']})")
    try:
        return info_from_meta(meta["dataset"]), meta["normalization"], meta["model"]
    except (KeyError, TypeError, ValueError) as error:
        raise WeightsError(f"{path} has damaged fcnseg metadata ({error!r}); export it again") from None


# --------------------------------------------------------------------------------------------- parity
def _inputs(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _shape(model: FCN, shape: Sequence[int]) -> tuple[int, ...]:
    """``shape`` with the channels of the net's input: 3 per input (colour, HHA)."""
    return (shape[0], 3 * len(getattr(model, "config", {}).get("inputs", ("rgb",))), *shape[2:])


def parity(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, shape: Sequence[int],
           seed: int = 0) -> tuple[float, float]:
    """``(max |forward(x) - model(x)|, tolerance)`` on a random normalised input ``x`` of ``shape``.

    The difference is inf when the output shapes differ. Float32 rounding grows with the logits, so the
    tolerance is 1e-4 of their largest magnitude (and at least 1e-4).
    """
    x = _inputs(shape, seed)
    with torch.no_grad(), _eval_mode(model):
        expected = model(x)
        got = forward(x)
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    if tuple(got.shape) != tuple(expected.shape):
        return float("inf"), tolerance
    return float((got.float() - expected).abs().max()), tolerance


def _verify(forward: Callable, model: FCN, what: str, path: Path) -> None:
    try:
        diff, tolerance = parity(forward, model, _shape(model, VERIFY_SHAPE))
        detail = ""
    except Exception as error:  # noqa: BLE001 - a runtime failure at another size is the same defect
        diff, tolerance = float("inf"), 0.0
        detail = f": {str(error).splitlines()[0] if str(error) else type(error).__name__}"
    if not diff <= tolerance:
        size = "x".join(map(str, VERIFY_SHAPE))
        raise ExportError(f"the {what} export of {path.name} does not reproduce the PyTorch model at an untraced "
                          f"input size {size} (max abs diff {diff:.3g} > {tolerance:.3g}){detail}; "
                          f"{path} was not written")


# ---------------------------------------------------------------------------------------------- files
@contextmanager
def _quiet_jit():
    """The tracer's warnings are expected here (torch.jit's and the TorchScript-based ONNX exporter's
    deprecation notices; size branches recorded as constants, which the FCN's are):
    the parity check, not a warning, decides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # LRN (CaffeNet) exports as strided slices that ONNX's constant folding leaves alone: harmless.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        yield


# ----------------------------------------------------------------------------------------------- ONNX
def export_onnx(source: str | Path | nn.Module, path: str | Path, opset: int = 18, info: DatasetInfo | None = None,
                normalization: str | None = None) -> Path:
    """Export a checkpoint (path) or an FCN module (then ``info`` is required) to an ONNX file.

    Input ``image`` (N x 3 x H x W float32, normalised), output ``logits`` (N x C x H x W); batch, height and
    width are dynamic. Dataset metadata, normalisation and model config go into ``metadata_props``. The file
    is checked with ONNX Runtime against the PyTorch model at an untraced size and batch before it replaces
    ``path`` (atomically); a mismatch raises :class:`ExportError` and leaves ``path`` untouched.
    """
    path = Path(path)
    onnx = require_module("onnx", "ONNX export")
    model, info, normalization = _resolve(source, info, normalization)
    meta = _metadata(model, info, normalization)
    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with _eval_mode(model), torch.no_grad(), _quiet_jit():
        try:
            torch.onnx.export(model, (_inputs(_shape(model, TRACE_SHAPE)),), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic})
        except Exception as error:  # noqa: BLE001 - e.g. an opset this torch cannot write
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ExportError(f"ONNX export (opset {opset}) failed: {first}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = f"fcnseg.{key}", json.dumps(value)
    proto.doc_string = (f"fcnseg {model.config['name']} ({model.config['backbone']}, {model.config['geometry']} "
                        f"geometry) for {info.name}: {INPUT_NAME} N x 3 x H x W ({normalization}-normalised) -> "
                        f"{OUTPUT_NAME} N x {info.num_classes} x H x W")

    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
        forward, _, _ = load_onnx(tmp)
        _verify(forward, model, "ONNX", path)
    return path


class OnnxForward:
    """``forward(x)``: run an ONNX Runtime session on a float32 N x 3 x H x W tensor, return a tensor on x's
    device. Thread-safe (ONNX Runtime sessions are), so one instance can serve concurrent requests."""

    def __init__(self, session: Any, path: Path, config: dict) -> None:
        self.session = session
        self.path = path
        self.config = config

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] % 3 or not x.shape[1]:
            raise ValueError(f"expected a normalised N x 3 x H x W tensor (3 channels per input), got shape "
                             f"{tuple(x.shape)}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxForward({str(self.path)!r})"


def load_onnx(path: str | Path, threads: int | None = None) -> tuple[OnnxForward, DatasetInfo, str]:
    """Open an fcnseg ONNX export with ONNX Runtime (CPU): ``(forward, info, normalization)``.

    ``threads``: ONNX Runtime's intra-op threads (None: its default, one per core).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"ONNX model not found: {path}")
    ort = require_module("onnxruntime", "running ONNX models")
    try:
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path} is not a readable ONNX model ({reason}); export one with "
                           "`fcnseg export CHECKPOINT --format onnx --out model.onnx`") from None
    props = session.get_modelmeta().custom_metadata_map
    try:
        meta = {key.removeprefix("fcnseg."): json.loads(value) for key, value in props.items()
                if key.startswith("fcnseg.")}
    except json.JSONDecodeError:
        raise WeightsError(f"{path} has damaged fcnseg metadata; export it again with `fcnseg export`") from None
    info, normalization, config = _from_metadata(meta, path)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise WeightsError(f"{path} has inputs/outputs {names}, expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']")
    return OnnxForward(session, path, config), info, normalization


# ---------------------------------------------------------------------------------------------- TorchScript
def export_torchscript(source: str | Path | nn.Module, path: str | Path, info: DatasetInfo | None = None,
                       normalization: str | None = None) -> Path:
    """Export a checkpoint (path) or an FCN module (then ``info`` is required) as a TorchScript archive.

    ``torch.jit.script`` is tried first; FCNs do not script (their geometry planning is plain Python), so in
    practice the net is traced (``torch.jit.trace``) through the same traceable padding as the ONNX export.
    Either way the result is checked against the model at an untraced size and batch before it is written;
    the metadata goes into the archive's extra file ``fcnseg.json``.
    """
    path = Path(path)
    model, info, normalization = _resolve(source, info, normalization)
    with _eval_mode(model), torch.no_grad(), _quiet_jit():
        try:
            compiled = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - scripting rejects much ordinary Python: fall back to tracing
            compiled = torch.jit.trace(model, _inputs(_shape(model, TRACE_SHAPE)), check_trace=False)
        _verify(compiled, model, "TorchScript", path)
    extra = {TORCHSCRIPT_EXTRA_FILE: json.dumps(_metadata(model, info, normalization))}
    # Written through a file handle: given a path, torch.jit.save names the archive's inner folder after it.
    with atomic_open(path) as handle, _quiet_jit():
        torch.jit.save(compiled, handle, _extra_files=extra)
    return path


def load_export(path: str | Path, threads: int | None = None) -> tuple[Callable, DatasetInfo, str, dict]:
    """An fcnseg ONNX or TorchScript export, told apart by its content: ``(forward, info, normalization,
    model config)``. ``threads``: ONNX Runtime's intra-op threads."""
    if file_kind(path) == "onnx":
        forward, info, normalization = load_onnx(path, threads)
        return forward, info, normalization, forward.config
    return _load_torchscript(path)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, DatasetInfo, str]:
    """Load an fcnseg TorchScript export on the CPU: ``(module in eval mode, info, normalization)``.

    A TorchScript archive holds code as well as weights: load only files from sources you trust.
    """
    return _load_torchscript(path)[:3]


def _load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, DatasetInfo, str, dict]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"TorchScript model not found: {path}")
    extra = {TORCHSCRIPT_EXTRA_FILE: ""}
    try:
        with _quiet_jit():  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as error:  # noqa: BLE001 - torch raises RuntimeError/ValueError variants
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsError(f"{path} is not a TorchScript archive ({reason}); export one with "
                           "`fcnseg export CHECKPOINT --format torchscript --out model.pt`") from None
    try:
        meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE] or "{}")
    except json.JSONDecodeError:
        meta = {}
    info, normalization, config = _from_metadata(meta, path)
    module.eval()
    return module, info, normalization, config
