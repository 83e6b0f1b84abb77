"""Deployment: export an FCN to ONNX or TorchScript with everything inference needs, and load it back.

An exported file maps a normalised ``N x 3 x H x W`` float32 ``image`` to ``N x C x H x W`` ``logits`` for
any batch size and any ``H, W >= 1``, exactly as the PyTorch model does (``3 x H x W`` is ``6 x H x W``
for a colour+HHA net: 3 channels per input), and carries the net's :class:`~fcnseg.models.spec.ModelSpec`
(architecture, inputs and their normalisation, classes): ONNX files as ``metadata_props`` (JSON strings
under ``fcnseg.*`` keys), TorchScript archives as the extra file ``fcnseg.json``. ``load_onnx`` /
``load_torchscript`` give ``(forward, spec)``, which ``fcnseg.api.Segmenter`` takes
(``fcnseg.load(path, backend="onnxruntime")``). Version-1 exports (no spec) are still read.

Damage is found on loading: a TorchScript archive by its zip checksums, an ONNX file (version 3 on) by the
sha256 of its own bytes that it carries under ``fcnseg.sha256`` (flipped bytes in the weights loaded without a
word and predicted wrong labels; a file without the entry is read unchecked).

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

import hashlib
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
from fcnseg.checkpoint import model_from_checkpoint, unwrap
from fcnseg.data.info import DatasetInfo
from fcnseg.errors import ConfigError, ExportError, WeightsError, require_model_file
from fcnseg.models.fcn import FCN
from fcnseg.models.spec import ModelSpec, spec_from_v1
from fcnseg.models.weights import file_kind, refuse_damaged_archive
from fcnseg.runtime import in_eval_mode

FORMAT = "fcnseg-export"
VERSION = 3  # 3: ONNX files carry the sha256 of their bytes (CHECKSUM_KEY)
CHECKSUM_KEY = "fcnseg.sha256"
_BLANK_CHECKSUM = '"' + "0" * 64 + '"'  # the value the digest is computed over, then replaced by it
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
def _resolve(source: str | Path | nn.Module, info: DatasetInfo | None) -> tuple[FCN, ModelSpec]:
    """The FCN of a checkpoint path or module, and its spec with the classes ``info`` (when given)."""
    if isinstance(source, nn.Module):
        model = unwrap(source)
        if not isinstance(model, FCN) or not hasattr(model, "spec"):
            raise ConfigError(f"expected an fcnseg FCN (from fcnseg.build_model), got {type(model).__name__}")
    else:
        model, _ = model_from_checkpoint(source)
    return model, model.spec.with_classes(info)


def _metadata(spec: ModelSpec) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "spec": spec.to_dict()}


def _from_metadata(meta: dict[str, Any], path: Path) -> ModelSpec:
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} has no fcnseg metadata: export it with `fcnseg export CHECKPOINT ...`")
    version = meta.get("version", 0)
    if not isinstance(version, int) or version > VERSION:
        raise WeightsError(f"{path} was written by a newer fcnseg (export version {version!r})")
    spec = ModelSpec.from_dict(meta.get("spec"), path) if version >= 2 else spec_from_v1(
        meta.get("model"), meta.get("normalization"), meta.get("dataset"), path)
    if spec.classes is None:
        raise WeightsError(f"{path} has no classes in its fcnseg metadata; export it again")
    return spec


# --------------------------------------------------------------------------------------------- parity
def _inputs(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def input_shape(spec: ModelSpec, batch: int, height: int, width: int) -> tuple[int, int, int, int]:
    """The shape of a normalised input batch of the net ``spec``: 3 channels per input (colour, HHA)."""
    return batch, spec.channels, height, width


def _shape(model: FCN, shape: Sequence[int]) -> tuple[int, ...]:
    return input_shape(model.spec, shape[0], *shape[2:])


def parity(forward: Callable[[torch.Tensor], torch.Tensor], model: nn.Module, shape: Sequence[int],
           seed: int = 0) -> tuple[float, float]:
    """``(max |forward(x) - model(x)|, tolerance)`` on a random normalised input ``x`` of ``shape``.

    The difference is inf when the output shapes differ. Float32 rounding grows with the logits, so the
    tolerance is 1e-4 of their largest magnitude (and at least 1e-4).
    """
    x = _inputs(shape, seed)
    with torch.no_grad(), in_eval_mode(model):
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
def export_onnx(source: str | Path | nn.Module, path: str | Path, opset: int = 18,
                info: DatasetInfo | None = None) -> Path:
    """Export a checkpoint (path) or an FCN module (``info``: its classes, if its spec has none) to an ONNX file.

    Input ``image`` (N x 3 x H x W float32, normalised), output ``logits`` (N x C x H x W); batch, height and
    width are dynamic. The net's spec goes into ``metadata_props``. The file
    is checked with ONNX Runtime against the PyTorch model at an untraced size and batch before it replaces
    ``path`` (atomically); a mismatch raises :class:`ExportError` and leaves ``path`` untouched.
    """
    path = Path(path)
    onnx = require_module("onnx", "ONNX export")
    model, spec = _resolve(source, info)
    meta = _metadata(spec)
    buffer = io.BytesIO()
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with in_eval_mode(model), torch.no_grad(), _quiet_jit():
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
    proto.doc_string = (f"fcnseg {spec.name} ({spec.backbone}, {spec.geometry} geometry) for {spec.classes.name}: "
                        f"{INPUT_NAME} N x {spec.channels} x H x W ({spec.normalization_text}-normalised) -> "
                        f"{OUTPUT_NAME} N x {sum(spec.head_classes)} x H x W")

    with atomic_path(path) as tmp:
        tmp.write_bytes(onnx_bytes(proto))
        forward, _ = load_onnx(tmp, threads=torch.get_num_threads())  # --threads (ONNX Runtime's default: all cores)
        _verify(forward, model, "ONNX", path)
    return path


def _checksum_entry() -> bytes:
    """The bytes before the checksum's value in a serialised model: a metadata entry is a protobuf message of
    field 1 (the key) and field 2 (the value), each a tag byte and a length byte before its bytes."""
    return b"\x0a" + bytes([len(CHECKSUM_KEY)]) + CHECKSUM_KEY.encode() + b"\x12" + bytes([len(_BLANK_CHECKSUM)])


def onnx_bytes(proto: Any) -> bytes:
    """The ONNX model ``proto`` serialised with the sha256 of its own bytes under ``fcnseg.sha256`` (computed
    with the value blank, then written in its place: the same length, so the file stays a valid model)."""
    kept = [entry for entry in proto.metadata_props if entry.key != CHECKSUM_KEY]  # a model made from an export
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CHECKSUM_KEY, _BLANK_CHECKSUM
    data = proto.SerializeToString()
    at = data.rindex(_checksum_entry()) + len(_checksum_entry())
    digest = f'"{hashlib.sha256(data).hexdigest()}"'.encode()
    return data[:at] + digest + data[at + len(digest):]


def refuse_damaged_onnx(path: Path) -> None:
    """A WeightsError naming ``path`` where its bytes do not give the sha256 it carries. A file without one passes
    (an earlier export, or one whose owner removed the entry after changing the model on purpose)."""
    raw = path.read_bytes()
    data = memoryview(raw)  # its slices are views: the file is held in memory once
    at = raw.rfind(_checksum_entry())
    if at < 0:
        return
    at += len(_checksum_entry())
    end = at + len(_BLANK_CHECKSUM)
    digest = hashlib.sha256(data[:at])
    digest.update(_BLANK_CHECKSUM.encode())
    digest.update(data[end:])
    if f'"{digest.hexdigest()}"'.encode() != bytes(data[at:end]):
        raise WeightsError(f"{path} changed since it was exported (edited, converted, or damaged by a failing disk "
                           "or copy): its bytes do not match the sha256 written into it then; export it again (or, "
                           f"if you changed it on purpose, remove its metadata entry {CHECKSUM_KEY})")


class OnnxForward:
    """``forward(x)``: run an ONNX Runtime session on a float32 N x 3 x H x W tensor, return a tensor on x's
    device. Thread-safe (ONNX Runtime sessions are), so one instance can serve concurrent requests."""

    def __init__(self, session: Any, path: Path, spec: ModelSpec, precision: str = "float32") -> None:
        self.session = session
        self.path = path
        self.spec = spec
        self.precision = precision  # "int8" for a quantised export: what serve's page and eval's title say

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] % 3 or not x.shape[1]:
            raise ValueError(f"expected a normalised N x 3 x H x W tensor (3 channels per input), got shape "
                             f"{tuple(x.shape)}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: array})
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxForward({str(self.path)!r})"


def load_onnx(path: str | Path, threads: int | None = None) -> tuple[OnnxForward, ModelSpec]:
    """Open an fcnseg ONNX export with ONNX Runtime (CPU): ``(forward, spec)``.

    ``threads``: ONNX Runtime's intra-op threads (None: its default, one per core).
    """
    path = require_model_file(path, "ONNX model", (".onnx",))
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
    spec = _from_metadata(meta, path)
    refuse_damaged_onnx(path)
    names = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if names != ([INPUT_NAME], [OUTPUT_NAME]):
        raise WeightsError(f"{path} has inputs/outputs {names}, expected ['{INPUT_NAME}'] -> ['{OUTPUT_NAME}']")
    int8 = meta.get("int8")
    precision = int8.get("precision", "int8") if isinstance(int8, dict) else "float32"
    return OnnxForward(session, path, spec, precision), spec


# ---------------------------------------------------------------------------------------------- TorchScript
def export_torchscript(source: str | Path | nn.Module, path: str | Path, info: DatasetInfo | None = None) -> Path:
    """Export a checkpoint (path) or an FCN module (``info``: its classes, if its spec has none) as a TorchScript
    archive.

    ``torch.jit.script`` is tried first; FCNs do not script (their geometry planning is plain Python), so in
    practice the net is traced (``torch.jit.trace``) through the same traceable padding as the ONNX export.
    Either way the result is checked against the model at an untraced size and batch before it is written;
    the spec goes into the archive's extra file ``fcnseg.json``.
    """
    path = Path(path)
    model, spec = _resolve(source, info)
    with in_eval_mode(model), torch.no_grad(), _quiet_jit():
        try:
            compiled = torch.jit.script(model)
        except Exception:  # noqa: BLE001 - scripting rejects much ordinary Python: fall back to tracing
            compiled = torch.jit.trace(model, _inputs(_shape(model, TRACE_SHAPE)), check_trace=False)
        _verify(compiled, model, "TorchScript", path)
    extra = {TORCHSCRIPT_EXTRA_FILE: json.dumps(_metadata(spec))}
    # Written through a file handle: given a path, torch.jit.save names the archive's inner folder after it.
    with atomic_open(path) as handle, _quiet_jit():
        torch.jit.save(compiled, handle, _extra_files=extra)
    return path


def load_export(path: str | Path, threads: int | None = None) -> tuple[Callable, ModelSpec]:
    """An fcnseg ONNX or TorchScript export, told apart by its content: ``(forward, spec)``.
    ``threads``: ONNX Runtime's intra-op threads."""
    if file_kind(path) == "onnx":
        return load_onnx(path, threads)
    return load_torchscript(path)


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, ModelSpec]:
    """Load an fcnseg TorchScript export on the CPU: ``(module in eval mode, spec)``.

    A TorchScript archive holds code as well as weights: load only files from sources you trust.
    """
    path = require_model_file(path, "TorchScript model", (".pt",))
    refuse_damaged_archive(path)
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
    spec = _from_metadata(meta if isinstance(meta, dict) else {}, path)
    module.eval()
    return module, spec
