"""``fcnseg export``: a checkpoint to ONNX or TorchScript, checked against PyTorch before it is written."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.commands.options import add_runtime
from fcnseg.export import export_onnx, export_torchscript, load_onnx, load_torchscript, parity
from fcnseg.outputs import output_file
from fcnseg.runtime import set_threads


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
    parser.add_argument("checkpoint", type=Path, help="fcnseg checkpoint (.pth)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--out", type=Path, required=True, help="output file (.onnx or .pt)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--check-sizes", type=parse_size, nargs="*", default=[], metavar="HxW",
                        help="after exporting, compare the exported model with PyTorch at these input sizes")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if fcnseg export did not write it")
    add_runtime(parser, device=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0 when the export matches PyTorch at every --check-sizes size, 1 otherwise."""
    threads = set_threads(args.threads)
    outputs = output_file(args.out, "export", args.overwrite, inputs=[args.checkpoint])
    model, info = model_from_checkpoint(args.checkpoint)
    if args.format == "onnx":
        out = export_onnx(model, args.out, opset=args.opset, info=info)
        forward, _, _ = load_onnx(out, threads=threads)
    else:
        out = export_torchscript(model, args.out, info=info)
        forward, _, _ = load_torchscript(out)
    outputs.record([out], flush=True)
    config = model.config
    print(f"wrote {out} ({args.format}; {config['name']} {config['backbone']} {config['geometry']}, "
          f"{info.num_classes} classes of {info.name}; {model.backbone.input_normalization} normalisation)")
    ok = True
    if args.check_sizes:
        print(f"{'size':>11}  max abs diff vs PyTorch")
        for height, width in args.check_sizes:
            diff, tolerance = parity(forward, model, (1, 3, height, width))
            ok = ok and diff <= tolerance
            print(f"{height:>5}x{width:<5}  {diff:.3g}{'' if diff <= tolerance else f'  > {tolerance:.3g} MISMATCH'}")
    return 0 if ok else 1
