"""The ``fcnseg`` command: one subcommand per task (train, eval, predict, export, serve, ...)."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

# Subcommands that live in their own modules; each has add_parser(subparsers) and run(args).
MODULE_COMMANDS = ("fcnseg.evaluate", "fcnseg.predict", "fcnseg.export", "fcnseg.serve")


def _add_train(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train an FCN from a YAML config and/or options")
    parser.add_argument("--config", help="flat YAML file of TrainConfig options")
    flags = {
        "--model": str, "--backbone": str, "--width": float, "--geometry": str, "--dataset": str, "--root": str,
        "--iterations": int, "--batch-size": int, "--lr": float, "--out": str, "--init-from": str,
        "--imagenet-weights": str, "--amp": str, "--device": str, "--workers": int, "--recipe": str,
        "--optimizer": str, "--seed": int, "--val-interval": int, "--checkpoint-interval": int, "--grad-accum": int,
    }
    for flag, kind in flags.items():
        parser.add_argument(flag, type=kind, default=None)
    parser.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--resume", action="store_true", default=None, help="continue the run in --out exactly")
    parser.add_argument("--channels-last", action="store_true", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any other TrainConfig option, value parsed as YAML (repeatable)")
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from fcnseg.train import TrainConfig, train

    overrides = {key: getattr(args, key) for key in (
        "model", "backbone", "width", "geometry", "dataset", "root", "iterations", "batch_size", "lr", "out",
        "init_from", "imagenet_weights", "amp", "device", "workers", "recipe", "optimizer", "seed", "val_interval",
        "checkpoint_interval", "grad_accum", "crop_size", "resume", "channels_last")}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key.strip().replace("-", "_")] = yaml.safe_load(value)
    saved = Path(args.out or TrainConfig.out) / "config.yaml"
    if args.resume and not args.config and saved.is_file():
        config = TrainConfig.from_yaml(saved, **overrides)  # the run's own settings, then the flags given
    elif args.config:
        config = TrainConfig.from_yaml(args.config, **overrides)
    else:
        config = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None}, source="options")
    result = train(config)
    if result["scores"]:
        from fcnseg.metrics import format_table

        print(format_table({f"{config.model} ({config.backbone})": result["scores"]}))
    print(f"checkpoints: {result['last']} (last), {result['best']} (best)")
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="train FCN-32s/16s/8s on built-in synthetic road scenes")
    parser.add_argument("--out", default="demo_out")
    parser.add_argument("--iterations", type=int, default=None, help="per stage (default: the demo's setting)")
    parser.set_defaults(func=lambda args: __import__("fcnseg.demo", fromlist=["run"]).run(args))


def _add_download(subparsers) -> None:
    parser = subparsers.add_parser("download", help="download a public dataset archive (voc2012, sbd, camvid)")
    parser.add_argument("name")
    parser.add_argument("--root", required=True, type=Path)
    parser.set_defaults(func=_run_download)


def _run_download(args: argparse.Namespace) -> int:
    from fcnseg.data.download import download_dataset

    print(download_dataset(args.name, args.root))
    return 0


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser("convert", help="turn a pytorch-fcn (authors' VOC model) file into a checkpoint")
    parser.add_argument("source", help="pytorch-fcn .pth file, URL, or one of fcn32s/fcn16s/fcn8s/fcn8s_atonce")
    parser.add_argument("--name", help="fcn32s | fcn16s | fcn8s | fcn8s_atonce (default: from the file)")
    parser.add_argument("--out", required=True, type=Path)
    parser.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from fcnseg.checkpoint import save_model
    from fcnseg.data.info import VOC
    from fcnseg.models.weights import fcn_from_pytorch_fcn

    model = fcn_from_pytorch_fcn(args.source, name=args.name)
    print(save_model(model, VOC, args.out))
    return 0


def _leave_process_group() -> None:
    """Under torchrun: wait for every rank, then tear the group down (gloo aborts at exit otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _unavailable(error: ImportError) -> int:
    print(f"fcnseg: error: this command cannot run here: {error}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for segmentation")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_train(subparsers)
    for name in MODULE_COMMANDS:
        try:
            importlib.import_module(name).add_parser(subparsers)
        except ImportError as error:  # e.g. an optional dependency is missing: the other commands still work
            command = name.rsplit(".", 1)[1].replace("evaluate", "eval")
            broken = subparsers.add_parser(command, help=f"(unavailable: {error})")
            broken.set_defaults(func=lambda args, error=error: _unavailable(error))
    _add_demo(subparsers)
    _add_download(subparsers)
    _add_convert(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors become one line on stderr and exit code 2."""
    from fcnseg.data.io import DataError
    from fcnseg.models.weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        _leave_process_group()
        return code
    except (DataError, WeightsError, FileNotFoundError, ValueError) as error:
        print(f"fcnseg: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        if type(error).__name__ in ("TrainingError", "DownloadError", "ExportError"):
            print(f"fcnseg: error: {error}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("fcnseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
