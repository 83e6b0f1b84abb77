"""``fcnseg serve``: a local web page to try a checkpoint on your own images."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from fcnseg.api import load
from fcnseg.commands.options import add_inference, add_max_memory, add_max_pixels, add_runtime, inference_options
from fcnseg.errors import ConfigError
from fcnseg.runtime import start
from fcnseg.serve import (
    DEFAULT_HOST,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_PORT,
    DEFAULT_QUEUE,
    make_server,
)

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="local web page: upload an image, see the segmentation",
        description="Start a local web page to try a checkpoint on your own images: upload or drop an "
                    "image, see the overlay, mask or both side by side, the class under the pointer, class "
                    "shares, and download the mask. Binds to 127.0.0.1 (this machine only) unless --host says "
                    "otherwise; answers only to its own address (Host) and its own page (Origin); no TLS, no "
                    "authentication.")
    parser.add_argument("checkpoint", help="fcnseg checkpoint (.pth), or its ONNX or TorchScript export")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it to your network, "
                             "without authentication)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default 20)")
    parser.add_argument("--queue", type=int, default=DEFAULT_QUEUE,
                        help=f"requests let in at once, the one computing and those waiting; more get 503 with "
                             f"Retry-After (default {DEFAULT_QUEUE})")
    add_max_memory(parser)  # each request's estimate is charged against it while it is in the queue
    add_max_pixels(parser, DEFAULT_MAX_PIXELS)
    add_inference(parser)
    add_runtime(parser)
    parser.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve until Ctrl+C."""
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.queue < 1:
        raise ConfigError(f"--queue must be at least 1, got {args.queue}")
    runtime = start(args.device, args.threads)
    segmenter = load(args.checkpoint, device=runtime.device, options=inference_options(args),
                     max_pixels=args.max_pixels, max_memory=args.max_memory)
    if segmenter.inputs != ("rgb",):
        raise ConfigError(f"{args.checkpoint} reads {'+'.join(segmenter.inputs)} (depth), but the page uploads colour "
                          "images only: use fcnseg predict --depth for this net")
    try:
        server = make_server(segmenter, args.host, args.port, int(args.max_upload_mb * 2**20), args.max_pixels,
                             quiet=args.quiet, queue=args.queue, max_memory=args.max_memory)
    except socket.gaierror as exc:  # a name that resolves to nothing
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. --host takes an "
                          "address of this machine (127.0.0.1, 0.0.0.0 for every interface, or its name)") from None
    except OSError as exc:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}. Is another server "
                          "using that port? Try --port 0 for a free one.") from None
    print(f"fcnseg serve: {segmenter.info.name} model from {args.checkpoint} at {server.url} (Ctrl+C to stop)",
          flush=True)
    if not _is_loopback(args.host):
        log.warning("warning: listening on %s, so other machines can reach this page and make this one compute; it "
                    "has no authentication and no TLS.", args.host)
    try:
        server.serve_forever()  # uvicorn stops on Ctrl+C (work in progress stops before its next window)
    except KeyboardInterrupt:
        pass  # uvicorn raises the signal again once it has shut down
    finally:
        server.server_close()
    print("\nfcnseg serve: stopped", flush=True)
    return 0
