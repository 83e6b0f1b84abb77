"""``fcnseg serve``: a local web page to try a checkpoint on your own images."""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import re
import socket

from fcnseg.api import load
from fcnseg.commands.options import (
    SHIPPED_NETS,
    add_inference,
    add_max_memory,
    add_max_pixels,
    add_runtime,
    inference_options,
    number,
)
from fcnseg.errors import ConfigError, printable
from fcnseg.ranges import COUNT, PORT, POSITIVE
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
    parser.add_argument("checkpoint", help="fcnseg checkpoint (.pth), its ONNX or TorchScript export, "
                                        f"or the name of a net shipped with fcnseg ({SHIPPED_NETS})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes it to your network, "
                             "without authentication)")
    parser.add_argument("--port", type=number(PORT), default=DEFAULT_PORT,
                        help="port (default 8000; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=number(POSITIVE), default=DEFAULT_MAX_UPLOAD_MB,
                        help="largest accepted upload in MB (default 20)")
    parser.add_argument("--queue", type=number(COUNT), default=DEFAULT_QUEUE,
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


_HOST_FIX = "use 127.0.0.1 (this machine only), 0.0.0.0 (every network) or another address of this machine"


def _check_host(host: str) -> None:
    """Refuse at once (before the model loads) what looks like an IPv4 address but is none, e.g. 999.1.1.1."""
    if re.fullmatch(r"[\d.]+", host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ConfigError(f"--host {host} is not an IP address (four numbers from 0 to 255); {_HOST_FIX}") from None


def _listen_problem(host: str, port: int, error: OSError) -> str:
    """Why ``host:port`` cannot be listened on: the cause the error number gives, and the fix."""
    where = f"cannot listen on {host}:{port}"
    if isinstance(error, socket.gaierror):
        return f"{where}: --host {host} cannot be resolved ({error.strerror}); {_HOST_FIX}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{where}: --host {host} is not an address of this machine; {_HOST_FIX}"
    if error.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use. Is another server using it? Try --port 0 for a free one."
    if error.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need administrator rights); try --port 0 for a free one"
    return f"{where}: {error.strerror or error}"


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint and serve until Ctrl+C."""
    _check_host(args.host)
    runtime = start(args.device, args.threads)
    segmenter = load(args.checkpoint, device=runtime.device, options=inference_options(args),
                     max_pixels=args.max_pixels, max_memory=args.max_memory)
    if segmenter.inputs != ("rgb",):
        raise ConfigError(f"{args.checkpoint} reads {'+'.join(segmenter.inputs)} (depth), but the page uploads colour "
                          "images only: use fcnseg predict --depth for this net")
    try:
        server = make_server(segmenter, args.host, args.port, int(args.max_upload_mb * 2**20), args.max_pixels,
                             quiet=args.quiet, queue=args.queue, max_memory=args.max_memory)
    except OSError as exc:
        raise ConfigError(_listen_problem(args.host, args.port, exc)) from None
    print(printable(f"fcnseg serve: {segmenter.info.name} model from {args.checkpoint} at {server.url} (Ctrl+C to "
                    "stop)"), flush=True)
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
