"""``fcnseg train``: every :class:`~fcnseg.train.TrainConfig` field is a flag, with the field's help."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from fcnseg.commands.options import add_dataclass_flags, add_quiet
from fcnseg.errors import ConfigError, printable
from fcnseg.metrics import format_table
from fcnseg.runtime import is_main_process
from fcnseg.train import TrainConfig, train
from fcnseg.train.config import check_options, with_overrides
from fcnseg.train.folder import saved_config
from fcnseg.yamlio import load_yaml, yaml_problem


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an FCN from a YAML config and/or options",
        description="Train (or with --resume continue) an FCN. Options come from --config (a flat YAML file "
                    "of these keys), then the flags, then --set KEY=VALUE; the resolved config is written to "
                    "OUT/config.yaml, with last.pth, best.pth and metrics.csv.")
    parser.add_argument("--config", type=Path, help="flat YAML file of training options")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any option, value parsed as YAML (repeatable), e.g. --set 'crop_size=[240, 320]'")
    add_quiet(parser)
    add_dataclass_flags(parser.add_argument_group("training options"), TrainConfig)
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config file (or, with --resume, the run's own config.yaml), then the flags, then --set."""
    overrides: dict[str, Any] = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                                 if hasattr(args, f.name)}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip().replace("-", "_")] = load_yaml(value)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {yaml_problem(error)}") from None
    check_options(overrides, "command line")
    if args.config:
        return TrainConfig.from_yaml(args.config, **overrides)
    out = Path(overrides.get("out", TrainConfig.out))
    started = saved_config(out) if overrides.get("resume") else None
    if started is not None:  # the run's own settings (config.yaml, else its last.pth), then the flags given
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig.from_dict(with_overrides({k: v for k, v in started.items() if k in known}, overrides),
                                     source=str(out / "config.yaml"))
    return TrainConfig.from_dict(overrides, source="options")


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = train(config)
    if not is_main_process():  # under torchrun: the run's summary, once (rank 0's)
        return 0
    if result["scores"]:
        print(format_table({f"{config.model} ({config.backbone})": result["scores"]}))
    print(printable(f"checkpoints: {result['last']} (last), {result['best']} (best)"))
    return 0
