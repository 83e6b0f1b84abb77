"""``fcnseg convert``: the authors' VOC models as converted by pytorch-fcn, made into fcnseg checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.checkpoint import save_model
from fcnseg.data.info import VOC
from fcnseg.models import MODELS
from fcnseg.models.weights import fcn_from_pytorch_fcn
from fcnseg.outputs import output_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("convert", help="turn a pytorch-fcn (authors' VOC model) file into a checkpoint")
    parser.add_argument("source", help="pytorch-fcn .pth file, URL, or one of " + ", ".join(MODELS))
    parser.add_argument("--name", choices=tuple(MODELS), help="the net (default: read from the file)")
    parser.add_argument("--out", required=True, type=Path, help="the fcnseg checkpoint to write (.pth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if fcnseg convert did not write it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    local = [args.source] if Path(args.source).exists() else []
    outputs = output_file(args.out, "convert", args.overwrite, inputs=local)
    model = fcn_from_pytorch_fcn(args.source, name=args.name)
    print(save_model(model, VOC, args.out))
    outputs.record([args.out], flush=True)
    return 0
