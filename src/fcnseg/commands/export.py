"""``fcnseg export``: a checkpoint to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.checkpoint import describe, model_from_checkpoint
from fcnseg.commands.options import SHIPPED_NETS, add_runtime, number, output_path
from fcnseg.errors import ConfigError, LimitError, printable
from fcnseg.export import export_onnx, export_torchscript, input_shape, load_onnx, load_torchscript, parity
from fcnseg.memory import default_budget, format_apart, forward_bytes
from fcnseg.models.fcn import FCN
from fcnseg.outputs import output_file
from fcnseg.pretrained import resolve
from fcnseg.quantize import Calibration, export_int8, parse_calibration
from fcnseg.ranges import Range
from fcnseg.runtime import set_threads

# The opsets an FCN exports to: from 11 (its padding needs it: older ones failed after ~220 lines of torch's graph
# dump) to the newest torch's TorchScript-based exporter writes (--opset 99 failed after ~225 lines as well).
# torch.onnx is not imported for the parser: the newest is written out (tests/test_export.py checks it).
NEWEST_OPSET = 20
OPSETS = Range(11, NEWEST_OPSET, whole=True)
INT8_OPSET = 13  # ONNX Runtime's QDQ format needs per-axis DequantizeLinear (opset 13)


def parse_size(text: str) -> tuple[int, int]:
    """'375x500' -> (375, 500): height x width."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 375x500, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return height, width


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint to ONNX or TorchScript, then check parity")
    parser.add_argument("checkpoint", type=Path,
                        help=f"fcnseg checkpoint (.pth), or the name of a net shipped with fcnseg ({SHIPPED_NETS})")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default=None,
                        help="onnx (the default, unless --out ends in .pt): an .onnx file for ONNX Runtime, from "
                             "Python, C++, C#, Java, JavaScript, ... (writing needs the onnx package, running "
                             "onnxruntime: the 'export' extra installs both); torchscript: a .pt archive for PyTorch "
                             "without fcnseg's code (torch.jit.load in Python, LibTorch in C++). fcnseg predict, eval "
                             "and serve run both. Either maps a normalised image to class scores and keeps the net's "
                             "classes and normalisation")
    parser.add_argument("--out", type=output_path, required=True, help="output file (.onnx or .pt)")
    parser.add_argument("--opset", type=number(OPSETS), default=18, help="ONNX opset (default 18)")
    parser.add_argument("--check-sizes", type=parse_size, nargs="*", default=[], metavar="HxW",
                        help="after exporting, compare the exported model with PyTorch at these input sizes")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if fcnseg export did not write it")
    parser.add_argument("--int8", action="store_true",
                        help="quantise to int8 (ONNX only; static, calibrated on --calibrate's images)")
    parser.add_argument("--calibrate", nargs="+", metavar="KEY=VALUE", default=[],
                        help="with --int8: the calibration images, as dataset=NAME root=PATH [split=train] "
                             "[images=32] [dataset options, e.g. inputs=rgb+hha]")
    add_runtime(parser, device=False)
    parser.set_defaults(func=run)


# What a file name says it holds: an export named for the other format misleads every tool that opens it.
_NAMED_FOR = {".onnx": "onnx", ".pt": "torchscript", ".pth": "checkpoint"}
_FORMAT_WORDS = {"onnx": "an ONNX model", "torchscript": "a TorchScript archive", "checkpoint": "an fcnseg checkpoint"}


def export_format(out: Path, asked: str | None, int8: bool = False) -> str:
    """The format to write: ``asked`` (--format; ONNX for ``int8``), else the one ``out``'s suffix names, else
    ONNX; a suffix that names the other format is refused (``--format onnx --out model.pt`` wrote ONNX under a
    TorchScript name)."""
    named = _NAMED_FOR.get(out.suffix.lower())
    chosen = "onnx" if int8 else asked or (named if named != "checkpoint" else None) or "onnx"
    if named is not None and named != chosen:
        right = out.with_suffix(next(suffix for suffix, fmt in _NAMED_FOR.items() if fmt == chosen))
        why = "--int8" if int8 else f"--format {chosen}"
        fix = "" if int8 or named == "checkpoint" else f", or give --format {named}"
        raise ConfigError(f"--out {out} is named as {_FORMAT_WORDS[named]} but {why} writes {_FORMAT_WORDS[chosen]}: "
                          f"name it {right}{fix}")
    return chosen


def run(args: argparse.Namespace) -> int:
    """0 when the export matches PyTorch at every --check-sizes size, 1 otherwise."""
    calibration = _calibration(args)  # --int8's own checks first: it writes ONNX, whatever --out is named
    args.format = export_format(args.out, args.format, args.int8)
    if args.out.is_dir():  # --overwrite would not help: it failed at the end, after the whole export
        raise ConfigError(f"--out {args.out} is a folder: give the file to write in it, e.g. "
                          f"{args.out / ('model.pt' if args.format == 'torchscript' else 'model.onnx')}")
    threads = set_threads(args.threads)
    args.checkpoint = resolve(args.checkpoint)  # a shipped net's name: its file (an input --out must not replace)
    outputs = output_file(args.out, "export", args.overwrite, inputs=[args.checkpoint])
    model, info = model_from_checkpoint(args.checkpoint)
    _refuse_sizes_beyond_memory(args.check_sizes, model)
    if calibration is not None:
        return _int8(args, model, info, calibration, outputs)
    with outputs.landing([args.out], flush=True):
        out = (export_onnx(model, args.out, opset=args.opset) if args.format == "onnx"
               else export_torchscript(model, args.out))
    forward, _ = load_onnx(out, threads=threads) if args.format == "onnx" else load_torchscript(out)
    print(printable(f"wrote {out} ({args.format}; {describe(model.spec)} of {info.name}; "
                    f"{model.spec.normalization_text} normalisation)"))
    return 0 if _check_sizes(args.check_sizes, forward, model) else 1


def _refuse_sizes_beyond_memory(sizes: list[tuple[int, int]], model: FCN) -> None:
    """A LimitError, before anything is exported, for a --check-sizes size whose two forward passes (PyTorch's and
    the export's) would not fit the memory free (30000x30000 was a traceback from torch's allocator at 10.8 GB)."""
    budget = default_budget()
    for height, width in sizes:
        need = 2 * forward_bytes(model.spec, 1, height, width)
        if need > budget:
            need_text, budget_text = format_apart(need, budget)
            raise LimitError(f"--check-sizes {height}x{width} would need about {need_text} (a forward pass in PyTorch "
                             f"and one in the export), more than the budget of {budget_text}: give smaller sizes")


def _check_sizes(sizes: list[tuple[int, int]], forward, model: FCN) -> bool:
    """Print the export's largest difference from PyTorch at each size; True when every one is within tolerance."""
    ok = True
    if sizes:
        print(f"{'size':>11}  max abs diff vs PyTorch")
    for height, width in sizes:
        diff, tolerance = parity(forward, model, input_shape(model.spec, 1, height, width))
        ok = ok and diff <= tolerance
        print(f"{height:>5}x{width:<5}  {diff:.3g}{'' if diff <= tolerance else f'  > {tolerance:.3g} MISMATCH'}")
    return ok


def _calibration(args: argparse.Namespace) -> Calibration | None:
    """The --int8 calibration, checked before anything is read."""
    if not args.int8:
        if args.calibrate:
            raise ConfigError("--calibrate goes with --int8")
        return None
    if args.opset < INT8_OPSET:
        raise ConfigError(f"--int8 needs --opset {INT8_OPSET} or newer (per-channel int8 weights), got {args.opset}")
    if args.format == "torchscript":
        raise ConfigError("--int8 exports ONNX models (ONNX Runtime runs them): use --format onnx")
    if not args.calibrate:
        raise ConfigError("--int8 needs --calibrate dataset=NAME root=PATH: the images whose value ranges int8 uses")
    return parse_calibration(args.calibrate)


def _int8(args: argparse.Namespace, model, info, calibration: Calibration, outputs) -> int:
    with outputs.landing([args.out], flush=True):
        out, report = export_int8(model, args.out, calibration, info=info, opset=args.opset)
    used = report["calibration"]["images"]  # images= is a most: a smaller split gives what it has
    print(printable(f"wrote {out} (onnx int8; {describe(model.spec)} of {info.name}; calibrated on {used} images "
                    f"of {calibration.dataset} {calibration.split}); on those images, labels agree with fp32 on "
                    f"{100 * report['agreement_with_fp32']:.2f}% of the pixels"))
    if args.check_sizes:
        print("(--check-sizes compares logits to 1e-4: not applicable to int8, skipped)")
    return 0
