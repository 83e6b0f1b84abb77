"""``fcnseg download``: fetch a public dataset archive (checksums, resume, safe unpacking) or one of the
authors' trained nets (a .caffemodel for ``fcnseg convert``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fcnseg.commands.options import add_quiet
from fcnseg.data.archives import ARCHIVES, download_dataset
from fcnseg.errors import ConfigError, printable
from fcnseg.models.zoo import CAFFE_NETS
from fcnseg.outputs import folder_lock
from fcnseg.transfer import download_file

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("download", help="download a dataset archive or one of the authors' nets")
    parser.add_argument("name", help=f"a dataset ({', '.join(ARCHIVES)}) or a net ({', '.join(CAFFE_NETS)})")
    parser.add_argument("--root", required=True, type=Path, help="folder to download (and unpack) into")
    parser.add_argument("--overwrite", action="store_true",
                        help="datasets: replace files in --root that differ from the archive's (without it, such a "
                             "file stops the download before anything is unpacked into --root)")
    add_quiet(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.name in CAFFE_NETS:
        url = CAFFE_NETS[args.name]["url"]
        # One process at a time: two would append to the same .part file.
        with folder_lock(args.root, "fcnseg download", option="--root"):
            print(printable(download_file(url, args.root / url.rsplit("/", 1)[1])))
        # A warning, not a note: shown with --quiet too, since the file is unverified.
        log.warning("note: the authors published no checksum for %s, so the file is not verified; convert it "
                    "with: fcnseg convert FILE --model %s --out %s.pth", args.name, args.name, args.name)
        return 0
    if args.name not in ARCHIVES:
        raise ConfigError(f"unknown name {args.name!r}; datasets: {', '.join(sorted(ARCHIVES))}; the authors' "
                          f"nets: {', '.join(CAFFE_NETS)}")
    print(printable(download_dataset(args.name, args.root, overwrite=args.overwrite)))
    return 0
