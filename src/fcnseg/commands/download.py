"""``fcnseg download``: fetch and unpack a public dataset archive (checksums, resume)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.commands.options import add_quiet
from fcnseg.data.archives import ARCHIVES, download_dataset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("download", help=f"download a public dataset archive ({', '.join(ARCHIVES)})")
    parser.add_argument("name", help=", ".join(ARCHIVES))
    parser.add_argument("--root", required=True, type=Path, help="folder to download and unpack into")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(download_dataset(args.name, args.root))
    return 0
