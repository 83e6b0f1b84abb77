"""``fcnseg convert``: the authors' trained nets made into fcnseg checkpoints, from their .caffemodel files
(no Caffe needed) or from pytorch-fcn's conversions of the VOC ones."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.checkpoint import first_not_finite, save_model
from fcnseg.commands.options import output_path
from fcnseg.data.info import VOC
from fcnseg.errors import ConfigError, WeightsError, printable
from fcnseg.models import MODELS
from fcnseg.models.weights import (
    URL_SCHEMES,
    fcn_from_pytorch_fcn,
    file_kind,
    load_torch_file,
    refuse_fcnseg_checkpoint,
    resolve_weights,
)
from fcnseg.models.zoo import CAFFE_NETS, fcn_from_caffemodel
from fcnseg.outputs import output_file


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="make the authors' nets (.caffemodel, or pytorch-fcn files) into fcnseg checkpoints",
        description="FILE.caffemodel with --model NAME (the authors' net it holds), or a pytorch-fcn .pth file, "
                    "URL or name (" + ", ".join(MODELS) + ") with --name for pytorch-fcn's VOC nets.")
    parser.add_argument("source", help="a .caffemodel file, or a pytorch-fcn .pth file, URL or name")
    parser.add_argument("--model", choices=tuple(CAFFE_NETS), metavar="NAME",
                        help="which of the authors' nets a .caffemodel holds: " + ", ".join(CAFFE_NETS))
    parser.add_argument("--name", choices=tuple(MODELS),
                        help="pytorch-fcn files: the net (default: read from the file)")
    parser.add_argument("--out", required=True, type=output_path, help="the fcnseg checkpoint to write (.pth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --out even if fcnseg convert did not write it")
    parser.set_defaults(func=run)


def _caffemodel(source: str) -> Path:
    """The local .caffemodel file ``source`` names (an http(s) URL is downloaded); a PyTorch file is refused
    here, by what it is, rather than as a protobuf that does not parse."""
    path = resolve_weights(source)
    if path.is_file() and file_kind(path) in ("checkpoint", "torchscript"):
        refuse_fcnseg_checkpoint(load_torch_file(path), path)
        raise WeightsError(f"{path} is a PyTorch file, not a .caffemodel: leave out --model to convert a "
                           "pytorch-fcn file")
    return path


def run(args: argparse.Namespace) -> int:
    local = [args.source] if Path(args.source).exists() else []
    outputs = output_file(args.out, "convert", args.overwrite, inputs=local)
    if args.model or str(args.source).endswith(".caffemodel"):
        if not args.model:
            raise ConfigError(f"{args.source} is a .caffemodel: say which net it holds with --model (one of "
                              f"{', '.join(CAFFE_NETS)})")
    try:
        if args.model:
            model, info = fcn_from_caffemodel(_caffemodel(args.source), args.model)
        else:
            model, info = fcn_from_pytorch_fcn(args.source, name=args.name), VOC
    except WeightsError as error:
        if not local and str(args.source).lower().startswith(tuple(f"{s}://" for s in URL_SCHEMES)):
            raise WeightsError(f"{error} (downloaded from {args.source}: if that copy is damaged, delete it, and "
                               "the next run downloads it again)") from None
        raise
    _refuse_unusable(model, info, args.source)
    with outputs.landing([args.out], flush=True):
        print(printable(save_model(model, info, args.out)))
    return 0


def _refuse_unusable(model, info, source: str) -> None:
    """One line for a net no command could use: weights that are not finite (written without a word, then
    refused by export), or a pytorch-fcn net of other classes than VOC's (it said "voc has 21 classes but the net
    scores 5", naming neither the file nor a way out)."""
    bad = first_not_finite(model.state_dict())
    if bad is not None:
        raise WeightsError(f"{source}: weight {bad} holds NaN or infinite values (a diverged training or a damaged "
                           "file): nothing was written")
    if model.spec.num_classes != info.num_classes:
        raise WeightsError(f"{source} scores {model.spec.num_classes} classes, not {info.name}'s {info.num_classes}: "
                           "convert knows the authors' VOC nets only; for other classes load it in Python "
                           "(fcnseg.models.weights.fcn_from_pytorch_fcn) and save it with their names "
                           "(fcnseg.checkpoint.save_model(model, DatasetInfo(...), path))")
