"""Pack a training checkpoint into the small file fcnseg ships: its validated weights in float16 and its spec.

    python scripts/pack_pretrained.py runs/camvid/fcn8s_il12_ema_w8_16k/last.pth src/fcnseg/pretrained/camvid-fcn8s.pth

writes OUT atomically (refused when it exists, unless --overwrite) and prints its SHA-256 and size: the SHA-256
goes into fcnseg.pretrained.SHIPPED (src/fcnseg/pretrained/__init__.py). See :func:`fcnseg.pretrained.pack`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fcnseg.errors import FcnsegError, printable
from fcnseg.memory import format_bytes
from fcnseg.pretrained import pack

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Pack an fcnseg checkpoint's weights and spec into a small file.")
    parser.add_argument("checkpoint", help="a training checkpoint (RUN/last.pth, RUN/best.pth) or any fcnseg .pth")
    parser.add_argument("out", type=Path, help="the packed file to write (.pth)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16",
                        help="what the weights are stored as (default float16; loading casts them to float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    try:
        sha256 = pack(args.checkpoint, args.out, DTYPES[args.dtype], overwrite=args.overwrite)
    except FcnsegError as error:
        print(printable(f"pack_pretrained: error: {error}"), file=sys.stderr)
        return 2
    print(printable(f"wrote {args.out} ({format_bytes(args.out.stat().st_size)}, {args.dtype} weights)"))
    print(f"sha256 {sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
