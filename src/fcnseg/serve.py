"""``fcnseg serve``: a small local web page to try a model on your own images.

A Starlette application under uvicorn (HTTP/1.1 parsed by h11: framing, keep-alive, chunked bodies;
``multipart/form-data`` by python-multipart), a static page (``fcnseg/web``) and a JSON API.

Endpoints:

* ``GET /`` the page, ``GET /app.js`` its script, ``GET /sample.png`` the sample image it offers.
* ``GET /api/info`` -> ``{dataset, num_classes, ignore_index, classes: [{id, name, color}], model, model_name,
  precision, normalization, device, max_upload_bytes, max_pixels}`` (``color`` is ``"#rrggbb"``; ``model`` is the
  net's architecture dict from its spec, for checkpoints and exports alike, or null; ``model_name`` e.g.
  ``"fcn8s (vgg16)"`` or ``"fcn8s (vgg16, int8)"``, as ``fcnseg eval`` titles its report; ``precision``
  ``"float32"`` or ``"int8"``).
* ``POST /api/segment`` with the image file as the request body (``curl --data-binary @photo.jpg
  http://127.0.0.1:8000/api/segment``) or as the file of a ``multipart/form-data`` form, as browsers and
  ``curl -F file=@photo.jpg`` send it ->
  ``{width, height, mask_png, color_png, image_png, labels_png, classes: [{id, name, color, share}],
  elapsed_ms}``. ``mask_png`` is a base64 palette PNG whose pixel values are the class indices,
  ``color_png`` the base64 RGB colour mask, ``image_png`` the base64 RGB image exactly as the model saw it
  (EXIF orientation applied; browsers cannot show every format the server reads, e.g. TIFF) and
  ``labels_png`` a greyscale PNG of the class indices (a browser decodes it to exact values, which it cannot
  do with a palette). ``classes`` lists the predicted classes, largest share first; the shares (fractions of
  all pixels) sum to 1. ``elapsed_ms`` is the model's inference time.

What is checked, in this order, before any work:

* ``Host`` must name this server: ``127.0.0.1:P``, ``localhost:P``, ``[::1]:P`` or the ``--host`` value with
  the port (any IP address when bound to all interfaces); else 421. A web page that rebinds its own domain
  name to 127.0.0.1 (DNS rebinding) therefore gets nothing.
* A ``POST`` whose ``Origin`` is another site (or ``null``) is refused with 403: a page elsewhere cannot make
  this machine compute. Only the origin the request was sent to (its ``Host``) is this server's page. Requests
  without ``Origin`` (curl, scripts) pass.
* Framing: h11 answers 400 and closes the connection on an invalid or conflicting ``Content-Length``;
  a request with both ``Content-Length`` and ``Transfer-Encoding`` is refused here (400, connection closed).
* Admission: an upload over ``--max-upload-mb`` (by ``Content-Length``, and counted as it streams) is 413;
  more than ``queue`` requests at once (the one computing and those waiting) get 503 with ``Retry-After``;
  the image header is read before decoding (400 not an image, 413 over ``--max-pixels``); then each request
  is charged its memory estimate (upload, decoded image, inference as :mod:`fcnseg.memory` plans it, the
  answer) until it is answered, and the charges together stay within ``--max-memory`` (503 with
  ``Retry-After`` while others hold it; 413 when the image alone cannot fit even in sliding windows).
* One prediction runs at a time, in a worker thread. A client that goes away (disconnects) while waiting or
  computing stops its work before the next window; an upload silent for ``timeout`` seconds is 408.

Errors are JSON ``{"error": message}``. No TLS, no authentication: it is meant for this machine (the default
127.0.0.1); ``--host`` beyond loopback lets anyone on the network use it.

The page blends image and colour mask in the browser with the same formula as
:func:`fcnseg.viz.overlay`, so the opacity slider needs no server round trip.
"""

from __future__ import annotations

import base64
import inspect
import io
import ipaddress
import json
import logging
import math
import re
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Protocol

import anyio
import numpy as np
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fcnseg.data.info import DatasetInfo
from fcnseg.data.io import decode_image
from fcnseg.errors import ConfigError, DataError, LimitError, RequestError
from fcnseg.memory import default_budget, fit, format_apart, format_bytes, inference_bytes
from fcnseg.viz import colorize, index_image

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_TIMEOUT = 60.0  # seconds an upload may stay silent
# Lower than ``fcnseg predict``'s limit: the page runs whole-image inference and should answer in seconds.
DEFAULT_MAX_PIXELS = 16_000_000
# Requests let in at once: one computes, the others wait with their upload (one person's page needs few).
DEFAULT_QUEUE = 16

# PIL format name -> the name users know. MPO is how PIL reports multi-picture JPEGs from many cameras.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WebP"}

# Bytes per pixel of building the answer beyond the inference estimate: the label map, the colour mask and
# image as arrays and PIL images, four PNGs, their base64 and the JSON text. Measured (peak RSS over the inputs
# while SegmentServer._answer and json.dumps run): 18.7 on a 4000x3000 noise image, the worst case for PNG
# size, 17.3 at 1000x1000; rounded up.
ANSWER_BYTES_PER_PIXEL = 24

SECURITY_HEADERS = [
    (b"server", b"fcnseg"),  # not uvicorn's name: it tells visitors nothing they need
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; style-src 'self' "
                                 b"'unsafe-inline'; frame-ancestors 'none'"),
]
_WILDCARDS = ("0.0.0.0", "::", "")
_ORIENTATION = 0x0112  # the EXIF tag; values 5 to 8 swap width and height
_STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"), "/sample.png": ("sample.png", "image/png")}


class SegmenterLike(Protocol):
    """What the server needs: ``predict(HxWx3 uint8 array) -> HxW class ids`` and a ``DatasetInfo``. A
    ``predict`` that takes ``on_forward`` (called before each forward pass, may raise to stop the work, as
    :meth:`fcnseg.api.Segmenter.predict`) lets a request whose client went away stop between windows.
    A :class:`~fcnseg.api.Segmenter` also brings ``spec``, ``options`` and ``channels_last``, which the memory
    estimate of each request needs."""

    info: DatasetInfo

    def predict(self, image: np.ndarray, on_forward: Callable[[], None] | None = None) -> np.ndarray: ...


class Busy(RequestError):
    """503: the queue or the memory budget is taken by other requests; ``retry_after`` seconds to wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(503, message)
        self.retry_after = retry_after


class Cancelled(RequestError):
    """Raised in the worker: the work of a request stopped (its client went away, or the server is stopping)."""

    def __init__(self) -> None:
        super().__init__(503, "the work on this request stopped")


class ClientGone(RequestError):
    """The client disconnected (499, as nginx logs it; nobody reads the answer); the message says when."""

    def __init__(self, when: str) -> None:
        super().__init__(499, when)


def _hex(color: Any) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in color))


def _png_base64(picture: Image.Image, compress_level: int = 6) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_upload(body: bytes, max_pixels: int) -> np.ndarray:
    """Decode uploaded image bytes to an HxWx3 uint8 RGB array, or raise :class:`RequestError`.

    The bytes go through :func:`fcnseg.data.io.decode_image`, the input path of every command, from
    memory: the header is checked first (format, pixel count), so a small file claiming a huge picture (a
    decompression bomb) is refused with 413 before any pixel is decoded.
    """
    try:
        return decode_image(body, max_pixels, formats=ACCEPTED_FORMATS, name="the uploaded file")
    except LimitError as error:
        raise RequestError(413, str(error)) from None
    except DataError as error:
        raise RequestError(400, str(error)) from None


def image_size(body: bytes, max_pixels: int) -> tuple[int, int]:
    """(width, height) of the uploaded image as it will be decoded (EXIF orientation applied), read from its
    header alone; what :func:`decode_upload` would refuse before decoding (not an image, a format not accepted,
    too many pixels) raises its :class:`RequestError` here, with its message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked below
            with Image.open(io.BytesIO(body)) as img:
                (width, height), kind = img.size, img.format
                turned = img.getexif().get(_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - whatever PIL says of a file it cannot open, decode_upload words it
        kind, width, height, turned = None, 0, 0, False
    if kind not in ACCEPTED_FORMATS or not 0 < width * height <= max_pixels:
        # Refused from the header with decode_upload's message; a file PIL opens here but not there decodes.
        height, width = decode_upload(body, max_pixels).shape[:2]
        return width, height
    return (height, width) if turned else (width, height)


async def _one_chunk(body: bytes):  # noqa: ANN202 - an async generator for MultiPartParser
    yield body


async def form_file(body: bytes, request: Request) -> bytes:
    """The uploaded file of a ``multipart/form-data`` body: its first part with a file name. A form of text fields
    only is refused: the parser has decoded them as text, which no longer holds an image's bytes (``curl -F
    file=<photo.png`` sends the file that way)."""
    try:
        form = await MultiPartParser(request.headers, _one_chunk(body), max_files=8, max_fields=16).parse()
    except MultiPartException as error:
        raise RequestError(400, f"the form could not be read: {error.message}") from None
    try:
        parts = list(form.values())
        files = [part for part in parts if not isinstance(part, str)]
        if files:
            return await files[0].read()
        fields = ", ".join(repr(name) for name in form.keys())
        raise RequestError(400, f"the form holds no file, only text field(s) {fields or 'none'}: send the image as a "
                                "file field (curl -F file=@photo.jpg; with '<' curl sends it as text)")
    finally:
        await form.close()


class HostRule:
    """The ``Host`` values (and so the ``Origin`` values) this server answers to: 127.0.0.1, localhost, [::1] and
    the address it was started with, at its port; any IP address when it listens on all interfaces (an IP
    address in ``Host`` cannot come from DNS rebinding, which needs a name the attacker controls)."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self.any_address = host in _WILDCARDS
        names = {"127.0.0.1", "localhost", "[::1]", f"[{host}]" if ":" in host else host}
        if self.any_address:
            names |= {socket.gethostname()}
        self.names = {name.lower() for name in names if name not in ("", "0.0.0.0", "[::]")}

    def allows(self, authority: str) -> bool:
        """Whether ``authority`` (``name:port``, as in ``Host``) names this server."""
        name, port = _normal_authority(authority)
        if port != self.port:
            return False
        return name in self.names or (self.any_address and _is_ip(name))

    def describe(self) -> str:
        shown = ", ".join(f"{name}:{self.port}" for name in sorted(self.names))
        return shown + (" or any IP address of this machine" if self.any_address else "")


def _split_authority(authority: str) -> tuple[str, int | None]:
    name, colon, port = authority.rpartition(":")
    if not colon or name.startswith("[") and not name.endswith("]"):  # no port (a bare [v6] has its colons inside)
        return authority, None
    return name, int(port) if re.fullmatch(r"[0-9]+", port) and len(port) <= 5 else -1


def _same_origin(origin: str, host: str) -> bool:
    """Whether ``origin`` is the page of the server the request came to (its ``host``, already allowed): any other
    page is another site, even one this server would answer to, such as another IP address when it listens on all
    interfaces (a page at http://203.0.113.7:8000 must not drive it)."""
    if not origin.lower().startswith("http://"):
        return False
    return _normal_authority(origin[len("http://"):]) == _normal_authority(host)


def _normal_authority(authority: str) -> tuple[str, int]:
    """``authority`` (``name:port``) as (lowercase name, port), HTTP's 80 where none is given (-1: not a port)."""
    name, port = _split_authority(authority.strip().lower())
    return name, 80 if port is None else port


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name[1:-1] if name.startswith("[") and name.endswith("]") else name)
    except ValueError:
        return False
    return True


class Guard:
    """ASGI middleware in front of every route: the Host and Origin checks, ``Content-Length`` together with
    ``Transfer-Encoding``, the security headers on every answer and one log line per request."""

    def __init__(self, app: Callable[..., Awaitable[None]], rule: HostRule, quiet: bool) -> None:
        self.app = app
        self.rule = rule
        self.quiet = quiet

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = [(name, value.decode("latin-1")) for name, value in scope["headers"]]
        host = [value for name, value in headers if name == b"host"]
        origin = [value for name, value in headers if name == b"origin"]
        status = [0]

        async def send_guarded(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        refusal = None
        if len(host) != 1 or not self.rule.allows(host[0]):
            refusal = (421, f"this server answers to Host {self.rule.describe()}, not {(host or [''])[0]!r} "
                            "(a protection against DNS rebinding); open it by one of those addresses")
        elif scope["method"] not in ("GET", "HEAD") and origin and not _same_origin(origin[0], host[0]):
            refusal = (403, f"requests from the page {origin[0]!r} are refused: only this server's own page may "
                            "send work (use curl or a script without an Origin header for an API client)")
        elif any(name == b"transfer-encoding" for name, _ in headers) and \
                any(name == b"content-length" for name, _ in headers):
            refusal = (400, "a request with both Content-Length and Transfer-Encoding is ambiguous; send one")
        if refusal:
            await _error(*refusal, close=True)(scope, receive, send_guarded)
        else:
            await self.app(scope, receive, send_guarded)
        if not self.quiet and status[0] != 499:  # a client that went away has its own line
            client = (scope.get("client") or ("-",))[0]
            log.info('%s "%s %s" %d', client, scope["method"], scope["path"], status[0])


def _json(status: int, payload: dict, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if close:
        headers["Connection"] = "close"  # the unread rest of the body must not be read as another request
    return Response(json.dumps(payload).encode("utf-8"), status, headers, media_type="application/json")


def _error(status: int, message: str, close: bool = False, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": message}, close=close, headers=headers)


@dataclass
class Job:
    """One admitted request: its charge against the memory budget and the flag that stops its work."""

    charge: int
    cancel: threading.Event = field(default_factory=threading.Event)
    started: bool = False  # its turn came: the worker took it
    passes: int = 0  # forward passes of the net so far


class Admission:
    """The bounded queue and the memory ledger. Only the event loop's thread calls it."""

    def __init__(self, slots: int, budget: int) -> None:
        self.slots = slots
        self.budget = budget
        self.jobs: list[Job] = []
        self.seconds = 1.0  # running mean of one request's work, for Retry-After

    @property
    def charged(self) -> int:
        return sum(job.charge for job in self.jobs)

    def retry_after(self) -> int:
        return max(1, math.ceil(self.seconds * len(self.jobs)))

    def enter(self, charge: int) -> Job:
        """Admit a request charged ``charge`` bytes (its upload, until its header is read), or raise Busy."""
        if len(self.jobs) >= self.slots:
            raise Busy(f"the server is busy: {len(self.jobs)} requests are in progress, its queue holds "
                       f"{self.slots} (--queue); try again shortly", self.retry_after())
        job = Job(0)
        self.jobs.append(job)
        try:
            self.recharge(job, charge)
        except RequestError:
            self.jobs.remove(job)
            raise
        return job

    def recharge(self, job: Job, charge: int) -> None:
        """Charge ``job`` ``charge`` bytes from now on; Busy while others hold the memory, 413 when it alone is over."""
        others = self.charged - job.charge
        if others + charge <= self.budget:
            job.charge = charge
            return
        if others == 0:
            over, limit = format_apart(charge, self.budget)
            raise RequestError(413, f"this request needs about {over}, more than this server's memory "
                                    f"budget of {limit} (--max-memory); send a smaller image")
        raise Busy(f"the server's memory budget of {format_bytes(self.budget)} (--max-memory) is taken by requests "
                   f"in progress; this one needs about {format_bytes(charge)}; try again shortly", self.retry_after())

    def leave(self, job: Job, seconds: float | None = None) -> None:
        self.jobs.remove(job)
        if seconds is not None:
            self.seconds = 0.8 * self.seconds + 0.2 * seconds


class SegmentServer:
    """The server of ``fcnseg serve``: a Starlette application on uvicorn, on a socket bound when it is made.

    Build it with :func:`make_server`; ``serve_forever()`` runs it in the calling thread (Ctrl+C stops it in the
    main thread), ``shutdown()`` from another thread stops it and waits, ``server_close()`` releases the socket.
    ``counters`` counts what happened (``forward_passes`` of the net, ``went_away``, ``busy`` 503s, ...) for
    tests and curious users.
    """

    def __init__(self, sock: socket.socket, host: str, segmenter: SegmenterLike, max_upload_bytes: int,
                 max_pixels: int, quiet: bool, timeout: float, queue: int, budget: int) -> None:
        self.socket = sock
        self.server_address = sock.getsockname()
        self.segmenter = segmenter
        # A segmenter without the hook (an older duck-typed one) is stopped only before its work starts.
        self._takes_hook = "on_forward" in inspect.signature(segmenter.predict).parameters
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.quiet = quiet
        self.timeout = timeout
        self.admission = Admission(queue, budget)
        self.counters: Counter[str] = Counter()
        self.stopping = threading.Event()  # set on shutdown: work in progress stops before its next window
        self._lock = anyio.Lock()  # one prediction at a time: concurrent ones would multiply peak memory
        self._serving = False
        self._finished = threading.Event()
        web = resources.files("fcnseg") / "web"
        self.static = {path: (web.joinpath(name).read_bytes(), kind) for path, (name, kind) in _STATIC.items()}
        routes = [Route(path, self._page, methods=["GET"]) for path in self.static]
        routes += [Route("/api/info", self._info, methods=["GET"]), Route("/api/segment", self._segment,
                                                                          methods=["POST"])]
        app = Starlette(routes=routes, exception_handlers={404: _no_route, 405: _no_route})
        self.app = Guard(app, HostRule(host, self.server_address[1]), quiet)
        config = uvicorn.Config(
            self.app, http="h11", ws="none", lifespan="off", loop="asyncio", log_config=None, access_log=False,
            server_header=False, proxy_headers=False, timeout_graceful_shutdown=10,
            # Open connections and requests in flight; over it uvicorn answers 503 itself.
            limit_concurrency=max(128, 4 * queue))
        self._uvicorn = _Uvicorn(config, self.stopping)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Serve until :meth:`shutdown` (or Ctrl+C in the main thread). ``poll_interval`` is ignored (kept from
        the ``http.server`` interface)."""
        self._serving = True
        try:
            self._uvicorn.run(sockets=[self.socket])
        finally:
            self._finished.set()

    def shutdown(self) -> None:
        """Stop serving (work in progress stops before its next window) and wait until :meth:`serve_forever`
        has returned."""
        self.stopping.set()
        self._uvicorn.should_exit = True
        if self._serving:
            self._finished.wait()

    def server_close(self) -> None:
        self.socket.close()

    def info(self) -> dict:
        """The ``GET /api/info`` answer."""
        seg = self.segmenter
        info: DatasetInfo = seg.info
        config = getattr(seg, "config", None)  # the architecture from the spec: checkpoints and exports alike
        model = dict(config) if isinstance(config, dict) else None
        return {
            "dataset": info.name,
            "num_classes": info.num_classes,
            "ignore_index": info.ignore_index,
            "classes": [{"id": i, "name": name, "color": _hex(info.palette[i])}
                        for i, name in enumerate(info.class_names)],
            "model": model,
            "model_name": getattr(seg, "title", None),
            "precision": getattr(seg, "precision", "float32"),
            "normalization": getattr(seg, "normalization", None),
            "device": str(getattr(seg, "device", "cpu")),
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
        }

    async def _page(self, request: Request) -> Response:
        body, kind = self.static[request.url.path]
        return Response(body, media_type=kind)

    async def _info(self, request: Request) -> Response:
        return _json(200, self.info())

    async def _segment(self, request: Request) -> Response:
        """``POST /api/segment``: admission, upload, header, memory charge, then the worker."""
        length = request.headers.get("content-length")  # h11 has checked it: digits, one value
        if length is not None and int(length) > self.max_upload_bytes:
            return _error(413, self._too_large(int(length)), close=True)
        began, seconds = time.monotonic(), None
        try:
            job = self.admission.enter(0 if length is None else int(length))  # chunked: charged as it arrives
        except RequestError as error:
            return self._refusal(error)
        try:
            answer = await self._run(request, job)
            seconds = time.monotonic() - began
            return Response(answer, 200, media_type="application/json")
        except ClientGone as gone:
            self.counters["went_away"] += 1
            if not self.quiet:
                log.info("%s went away %s", (request.client or ("-",))[0], gone)
            return Response(status_code=499)  # nobody reads it: uvicorn drops answers to closed connections
        except RequestError as error:
            return self._refusal(error)
        except anyio.get_cancelled_exc_class():
            if not self.stopping.is_set():
                raise
            # A second Ctrl+C: uvicorn exits at once and the event loop cancels this task. The client got a 500
            # and the terminal a traceback; it gets the answer of a server that is stopping.
            return self._refusal(RequestError(503, "the server is stopping"))
        except Exception as error:  # noqa: BLE001 - the page gets one line, the terminal the traceback
            log.error("segmentation failed", exc_info=True)
            return _error(500, f"the model failed on this image: {type(error).__name__}: {error}")
        finally:
            self.admission.leave(job, seconds)

    def _refusal(self, error: RequestError) -> Response:
        self.counters[f"refused_{error.status}"] += 1
        if isinstance(error, Busy):
            self.counters["busy"] += 1
            return _error(503, error.message, headers={"Retry-After": str(error.retry_after)})
        return _error(error.status, error.message, close=error.status in (408, 413))

    def _too_large(self, size: int) -> str:
        limit = format_bytes(self.max_upload_bytes)
        return f"the upload is {format_bytes(size)}; this server accepts at most {limit} (restart it with a larger " \
               "--max-upload-mb)"

    async def _run(self, request: Request, job: Job) -> bytes:
        body = await self._read_body(request, job)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            body = await form_file(body, request)
        width, height = await anyio.to_thread.run_sync(image_size, body, self.max_pixels)
        changes, charge = await anyio.to_thread.run_sync(self._plan, width, height, len(body))  # meta-device net
        self.admission.recharge(job, charge)
        return await self._predict(request, job, body, changes)

    async def _read_body(self, request: Request, job: Job) -> bytes:
        """The request body, counted (and charged) as it arrives: chunked bodies have no Content-Length to check
        first."""
        chunks, size = [], 0
        while True:
            with anyio.move_on_after(self.timeout) as waited:
                message = await request.receive()
            if waited.cancelled_caught:
                raise RequestError(408, f"the upload stalled: nothing arrived for {self.timeout:g} s; try again")
            if message["type"] == "http.disconnect":
                raise ClientGone(f"during the upload, after {size} bytes")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_upload_bytes:
                raise RequestError(413, self._too_large(size))
            if size > job.charge:
                self.admission.recharge(job, size)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _plan(self, width: int, height: int, upload: int) -> tuple[dict[str, Any], int]:
        """The inference option changes that fit this server's memory budget (sliding windows for a large image)
        and the bytes to charge the request: its upload (twice: bytes and a form's copy), the answer, inference."""
        pixels, budget = width * height, self.admission.budget
        extra = 2 * upload + ANSWER_BYTES_PER_PIXEL * pixels
        seg = self.segmenter
        spec = getattr(seg, "spec", None)
        if spec is None:  # not a Segmenter: no estimate of the net, only the decoded image
            return {}, extra + 3 * pixels
        options, channels_last = seg.options, getattr(seg, "channels_last", False)
        try:
            if extra >= budget:
                raise LimitError("no room")
            fitted, note = fit(spec, 1, height, width, options, budget - extra, name="the uploaded file",
                               channels_last=channels_last)
        except LimitError:
            raise RequestError(413, f"the uploaded file ({width}x{height}) needs more memory than this server's "
                                    f"budget of {format_bytes(budget)}, even in 64x64 sliding windows: send a smaller "
                                    "image, or restart fcnseg serve with a larger --max-memory") from None
        if note and hasattr(seg, "note"):
            seg.note(note)
        changes = {} if fitted == options else {"mode": fitted.mode, "window": fitted.window}
        return changes, extra + inference_bytes(spec, 1, height, width, fitted, channels_last=channels_last)

    async def _predict(self, request: Request, job: Job, body: bytes, changes: dict[str, Any]) -> bytes:
        """The answer from the worker thread, one request at a time; a client that goes away stops its work."""
        outcome: list[Any] = []
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, request, job, group.cancel_scope)
            async with self._lock:
                try:
                    outcome.append(await anyio.to_thread.run_sync(self._compute, body, job, changes))
                except Exception as error:  # noqa: BLE001 - carried out of the task group as it is
                    outcome.append(error)
            group.cancel_scope.cancel()
        if outcome and not isinstance(outcome[0], Exception):
            return outcome[0]
        if self.stopping.is_set() and not job.cancel.is_set():
            raise RequestError(503, "the server is stopping")
        if job.cancel.is_set() or not outcome:
            passes = f"after {job.passes} forward passes" if job.started else "while waiting for its turn"
            raise ClientGone(f"{passes}; its work stopped")
        raise outcome[0]

    async def _watch(self, request: Request, job: Job, scope: anyio.CancelScope) -> None:
        """Wait for the client to disconnect (the body is read: nothing else can arrive), then stop the job."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        job.cancel.set()
        scope.cancel()

    def _compute(self, body: bytes, job: Job, changes: dict[str, Any]) -> bytes:
        """Decode, predict and answer (JSON bytes), in the worker thread; checks the job before each window."""
        job.started = True

        def check() -> None:
            if job.cancel.is_set() or self.stopping.is_set():
                raise Cancelled()

        def before_forward() -> None:
            check()
            job.passes += 1
            self.counters["forward_passes"] += 1

        check()
        image = decode_upload(body, self.max_pixels)
        start = time.perf_counter()
        try:
            hook = {"on_forward": before_forward} if self._takes_hook else {}
            labels = np.asarray(self.segmenter.predict(image, **hook, **changes))
        except LimitError as error:  # the segmenter's own memory guard: nothing fits its budget
            raise RequestError(413, str(error)) from None
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        return json.dumps(self._answer(image, labels, elapsed_ms)).encode("utf-8")

    def _answer(self, image: np.ndarray, labels: np.ndarray, elapsed_ms: float) -> dict:
        """The ``POST /api/segment`` answer for ``image`` and its label map."""
        info: DatasetInfo = self.segmenter.info
        height, width = image.shape[:2]
        if labels.shape != (height, width) or not np.issubdtype(labels.dtype, np.integer):
            raise RuntimeError(f"the segmenter returned shape {labels.shape} dtype {labels.dtype}, "
                               f"expected an integer {height} x {width} label map")
        if labels.min() < 0 or labels.max() >= info.num_classes:
            raise RuntimeError(f"the segmenter returned class ids {labels.min()}..{labels.max()}, but "
                               f"{info.name} has classes 0..{info.num_classes - 1}")
        labels = labels.astype(np.uint8)
        counts = np.bincount(labels.ravel(), minlength=info.num_classes)
        present = sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))
        classes = [{"id": int(i), "name": info.class_names[i], "color": _hex(info.palette[i]),
                    "share": float(counts[i] / labels.size)} for i in present]
        return {
            "width": width,
            "height": height,
            "mask_png": _png_base64(index_image(labels, info)),
            "color_png": _png_base64(Image.fromarray(colorize(labels, info))),
            # Low compression: photos barely compress anyway and this keeps large uploads quick.
            "image_png": _png_base64(Image.fromarray(image), compress_level=1),
            "labels_png": _png_base64(Image.fromarray(labels, mode="L"), compress_level=1),
            "classes": classes,
            "elapsed_ms": round(elapsed_ms, 1),
        }


async def _no_route(request: Request, error: Exception) -> Response:
    """404 and 405 as JSON, like every other error."""
    path, method = request.url.path, request.method
    if isinstance(error, HTTPException) and error.status_code == 405:
        allowed = "POST" if path == "/api/segment" else "GET"
        return _error(405, f"{method} {path} is not supported: use {allowed}", close=method not in ("GET", "HEAD"))
    what = f"no such page: {path}" if method in ("GET", "HEAD") else f"no such endpoint: {method} {path}"
    return _error(404, what, close=method not in ("GET", "HEAD"))


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, which also stops the work in progress on Ctrl+C (its signal handler)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)


class _UvicornLines(logging.Handler):
    """uvicorn's messages as fcnseg's: its warnings (e.g. "Invalid HTTP request received.", one per bad request)
    as notes, its errors as errors; its start-up chatter dropped."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            level = logging.INFO if record.levelno == logging.WARNING else record.levelno
            log.log(level, "%s", record.getMessage(), exc_info=record.exc_info)


def _route_library_logs() -> None:
    """uvicorn's lines through fcnseg's log; python-multipart's dropped (a malformed form is already our 400)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(handler, _UvicornLines) for handler in logger.handlers):
        logger.addHandler(_UvicornLines())
        logger.propagate = False
    multipart = logging.getLogger("python_multipart")
    if not multipart.handlers:  # a handler of its own: without one, logging's last resort prints to stderr
        multipart.addHandler(logging.NullHandler())
        multipart.propagate = False


def make_server(segmenter: SegmenterLike, host: str = DEFAULT_HOST, port: int = 0,
                max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
                max_pixels: int = DEFAULT_MAX_PIXELS, quiet: bool = False, timeout: float = DEFAULT_TIMEOUT,
                queue: int = DEFAULT_QUEUE, max_memory: int | None = None) -> SegmentServer:
    """A ready-to-run server (call ``serve_forever()``) around ``segmenter``, its socket bound.

    ``segmenter`` is anything with ``predict(HxWx3 uint8 array) -> HxW class ids`` and ``info``
    (a :class:`~fcnseg.data.info.DatasetInfo`), e.g. :func:`fcnseg.load`'s result. ``port=0`` picks a free port
    (see ``server.server_address`` / ``server.url``). Uploads over ``max_upload_bytes`` or pictures over
    ``max_pixels`` are refused with 413; an upload silent for ``timeout`` seconds with 408; more than ``queue``
    requests at once, or more memory than ``max_memory`` bytes charged at once (default: the segmenter's
    ``max_memory``, else 80% of the memory available now), get 503 with ``Retry-After``. ``quiet`` turns off the
    per-request log lines (INFO on ``fcnseg.serve``). Raises OSError when the address cannot be bound.
    """
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_pixels", max_pixels), ("queue", queue),
                        ("timeout", timeout)):
        if not value > 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    budget = max_memory if max_memory is not None else getattr(segmenter, "max_memory", None)
    if budget is None:
        budget = default_budget(getattr(segmenter, "device", "cpu"))
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # connections wait here until serve_forever runs
    except OSError:
        sock.close()
        raise
    _route_library_logs()
    return SegmentServer(sock, host, segmenter, max_upload_bytes, max_pixels, quiet, timeout, queue, budget)
