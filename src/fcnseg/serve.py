"""``fcnseg serve``: a small local web page to try a model on your own images.

Standard library HTTP server (``http.server.ThreadingHTTPServer``), a static page (``fcnseg/web``) and a
JSON API; no web framework, no JavaScript build step.

Endpoints:

* ``GET /`` the page, ``GET /app.js`` its script.
* ``GET /api/info`` -> ``{dataset, num_classes, ignore_index, classes: [{id, name, color}], model,
  normalization, device, max_upload_bytes, max_pixels}`` (``color`` is ``"#rrggbb"``; ``model`` is the
  checkpoint's architecture dict, or null).
* ``POST /api/segment`` with the image file as the request body (``curl --data-binary @photo.jpg
  http://127.0.0.1:8000/api/segment``) or as the file of a ``multipart/form-data`` form, as browsers and
  ``curl -F file=@photo.jpg`` send it ->
  ``{width, height, mask_png, color_png, image_png, classes: [{id, name, color, share}], elapsed_ms}``.
  ``mask_png`` is a base64 palette PNG whose pixel values are the class indices, ``color_png`` the
  base64 RGB colour mask and ``image_png`` the base64 RGB image exactly as the model saw it (EXIF
  orientation applied; browsers cannot show every format the server reads, e.g. TIFF). ``classes``
  lists the predicted classes, largest share first; the shares (fractions of all pixels) sum to 1.
  ``elapsed_ms`` is the model's inference time.

Errors are JSON ``{"error": message}``: 400 not an image / unsupported format / corrupt file, 408 upload
stalled, 411 no Content-Length, 413 upload or image too large, 404 unknown path, 500 model failure. A
client that goes away mid-request costs one log line, not a traceback.

The page blends image and colour mask in the browser with the same formula as
:func:`fcnseg.viz.overlay`, so the opacity slider needs no server round trip.
"""

from __future__ import annotations

import base64
import email.policy
import io
import json
import socket
import sys
import threading
import time
import traceback
from email.parser import BytesParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from fcnseg.data.info import DatasetInfo
from fcnseg.data.io import decode_image
from fcnseg.errors import ConfigError, DataError, LimitError, RequestError
from fcnseg.viz import colorize, index_image

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_TIMEOUT = 60.0  # seconds a connection may stay silent
# Lower than ``fcnseg predict``'s limit: the page runs whole-image inference and should answer in seconds.
DEFAULT_MAX_PIXELS = 16_000_000

# PIL format name -> the name users know. MPO is how PIL reports multi-picture JPEGs from many cameras.
ACCEPTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG", "BMP": "BMP", "TIFF": "TIFF", "WEBP": "WebP"}

# How long (seconds) to keep reading a refused body before closing: see ``_discard_body``.
_DISCARD_SECONDS = 2.0


class SegmenterLike(Protocol):
    """What the server needs: ``predict(HxWx3 uint8 array) -> HxW class ids`` and a ``DatasetInfo``."""

    info: DatasetInfo

    def predict(self, image: np.ndarray) -> np.ndarray: ...


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


def form_file(body: bytes, content_type: str) -> bytes:
    """The uploaded file of a ``multipart/form-data`` body (its first part with a file name, or the only part)."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    parts = list(message.iter_parts()) if message.is_multipart() else []
    files = [part for part in parts if part.get_filename()] or (parts if len(parts) == 1 else [])
    if not files:
        raise RequestError(400, "the form holds no file: send the image as a file field (curl -F file=@photo.jpg)")
    return files[0].get_payload(decode=True) or b""


class SegmentServer(ThreadingHTTPServer):
    """The HTTP server of ``fcnseg serve``; build it with :func:`make_server`."""

    daemon_threads = True  # a hung browser connection must not keep the process alive on Ctrl+C
    # Connections waiting to be accepted: socketserver's default of 5 made a busy machine reset uploads when
    # dozens arrived at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], segmenter: SegmenterLike, max_upload_bytes: int,
                 max_pixels: int, quiet: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.segmenter = segmenter
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.quiet = quiet
        self.timeout_seconds = timeout
        # One prediction at a time: concurrent uploads would multiply peak memory for no speed-up.
        self.predict_lock = threading.Lock()
        web = resources.files("fcnseg") / "web"
        self.static = {
            "/": (web.joinpath("index.html").read_bytes(), "text/html; charset=utf-8"),
            "/app.js": (web.joinpath("app.js").read_bytes(), "text/javascript; charset=utf-8"),
        }
        self.static["/index.html"] = self.static["/"]
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (or stalled) is one log line; anything else keeps its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            if not self.quiet:
                print(f"fcnseg serve: {client_address[0]} went away ({type(error).__name__})", file=sys.stderr)
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def info(self) -> dict:
        """The ``GET /api/info`` answer."""
        seg = self.segmenter
        info: DatasetInfo = seg.info
        config = getattr(seg, "config", None)  # the architecture from the spec: checkpoints and exports alike
        return {
            "dataset": info.name,
            "num_classes": info.num_classes,
            "ignore_index": info.ignore_index,
            "classes": [{"id": i, "name": name, "color": _hex(info.palette[i])}
                        for i, name in enumerate(info.class_names)],
            "model": dict(config) if isinstance(config, dict) else None,
            "normalization": getattr(seg, "normalization", None),
            "device": str(getattr(seg, "device", "cpu")),
            "max_upload_bytes": self.max_upload_bytes,
            "max_pixels": self.max_pixels,
        }

    def segment(self, body: bytes) -> dict:
        """The ``POST /api/segment`` answer for the uploaded image bytes ``body``."""
        image = decode_upload(body, self.max_pixels)
        info: DatasetInfo = self.segmenter.info
        with self.predict_lock:
            start = time.perf_counter()
            try:
                labels = np.asarray(self.segmenter.predict(image))
            except LimitError as error:  # the memory estimate: nothing fits this server's budget
                raise RequestError(413, str(error)) from None
            elapsed_ms = (time.perf_counter() - start) * 1000.0
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
            "classes": classes,
            "elapsed_ms": round(elapsed_ms, 1),
        }


class _SegmentServer6(SegmentServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: SegmentServer
    server_version = "fcnseg"
    protocol_version = "HTTP/1.1"  # keep-alive; every response carries a Content-Length

    def setup(self) -> None:
        self.timeout = self.server.timeout_seconds  # an idle or stalled connection must not hold a thread forever
        super().setup()

    def version_string(self) -> str:
        return self.server_version  # not the Python version: it tells visitors nothing they need

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.server.quiet:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; "
                                                    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'")
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: dict, close: bool = False) -> None:
        self._send(status, json.dumps(payload).encode("utf-8"), "application/json", close=close)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path in self.server.static:
            self._send(200, *self.server.static[path])
        elif path == "/api/info":
            self._send_json(200, self.server.info())
        else:
            self._send_json(404, {"error": f"no such page: {path}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path != "/api/segment":
            self._send_json(404, {"error": f"no such endpoint: POST {path}"}, close=True)
            return
        try:
            body = self._read_body()
            self._send_json(200, self.server.segment(body))
        except RequestError as exc:
            self._send_json(exc.status, {"error": exc.message}, close=exc.status in (408, 411, 413))
        except ConnectionError:
            raise  # the client went away: SegmentServer.handle_error logs one line
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the terminal the traceback
            self.log_error("segmentation failed:\n%s", traceback.format_exc())
            self._send_json(500, {"error": f"the model failed on this image: {type(exc).__name__}: {exc}"})

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise RequestError(411, "chunked uploads are not supported: send the file with a Content-Length header")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "missing Content-Length header: send the image file as the request body")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            raise RequestError(400, f"invalid Content-Length header {raw!r}") from None
        limit = self.server.max_upload_bytes
        if length > limit:
            self._discard_body(length)
            raise RequestError(413, f"the upload is {length / 2**20:.1f} MB; this server accepts at most "
                                    f"{limit / 2**20:g} MB (restart it with a larger --max-upload-mb)")
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise RequestError(408, f"the upload stalled: nothing arrived for {self.timeout:g} s; try again") from None
        if len(body) < length:
            raise RequestError(400, f"the upload was cut off after {len(body)} of {length} bytes; try again")
        content_type = self.headers.get("Content-Type", "")
        return form_file(body, content_type) if content_type.startswith("multipart/form-data") else body

    def _discard_body(self, length: int) -> None:
        """Read and drop a refused body for a short while.

        Closing a socket with unread data makes the kernel reset the connection, and the browser then
        reports a network error instead of showing our 413 message.
        """
        deadline = time.monotonic() + _DISCARD_SECONDS
        self.connection.settimeout(0.5)
        try:
            while length > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass  # timeout or reset: the error response is still worth trying


def make_server(segmenter: SegmenterLike, host: str = DEFAULT_HOST, port: int = 0,
                max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20),
                max_pixels: int = DEFAULT_MAX_PIXELS, quiet: bool = False, timeout: float = DEFAULT_TIMEOUT
                ) -> SegmentServer:
    """A ready-to-run server (call ``serve_forever()``) around ``segmenter``.

    ``segmenter`` is anything with ``predict(HxWx3 uint8 array) -> HxW class ids`` and ``info`` (a
    :class:`~fcnseg.data.info.DatasetInfo`), e.g. :func:`fcnseg.load`'s result. ``port=0`` picks a
    free port (see ``server.server_address`` / ``server.url``). Uploads over ``max_upload_bytes`` or
    pictures over ``max_pixels`` are refused with 413; a connection silent for ``timeout`` seconds is closed
    (408 mid-upload). ``quiet`` turns off the per-request log lines.
    """
    if max_upload_bytes <= 0:
        raise ConfigError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    if max_pixels <= 0:
        raise ConfigError(f"max_pixels must be positive, got {max_pixels}")
    server_class = _SegmentServer6 if ":" in host else SegmentServer
    return server_class((host, port), segmenter, max_upload_bytes, max_pixels, quiet=quiet, timeout=timeout)
