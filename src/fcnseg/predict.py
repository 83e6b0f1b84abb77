"""Segment images with a trained FCN: the Python API (``load`` / ``Segmenter``) and ``fcnseg predict``.

    seg = fcnseg.predict.load("model.pt")
    labels = seg.predict("street.jpg")                        # HxW class indices at the image's size
    labels, probs = seg.predict(pil_image, return_probs=True)  # probs: C x H x W float32

Checkpoints carry the architecture, class names, palette and input normalisation, so nothing has to be
restated. Inference itself (whole image or sliding window, flips, scales) lives in
:mod:`fcnseg.inference`; this module turns user inputs (paths, PIL images, arrays) into network input
and the results back into numpy arrays and files.

Image files are checked against a pixel limit *before* they are decoded (decompression bombs: a few
kilobytes of PNG can expand to gigabytes of pixels).

CLI failure policy: mistakes on the command line (a missing input path, a pattern matching nothing,
two inputs that would write the same output names, bad options) stop the run with exit code 2 before
anything is written. An input file that turns out to be unreadable does not stop the run: the other
images are processed, every failure is reported with its file name at the end, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from fcnseg import viz
from fcnseg.atomic import atomic_open
from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data.info import DatasetInfo
from fcnseg.data.io import DataError, image_to_rgb, read_image
from fcnseg.inference import predict_labels, predict_probs, resolve_device
from fcnseg.normalization import NORMALIZATIONS, normalize

DEFAULT_MAX_PIXELS = 200_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16}

ImageInput = str | os.PathLike | Image.Image | np.ndarray
Forward = Callable[[torch.Tensor], torch.Tensor]

# PIL's limit is a module global; a lock keeps concurrent callers (e.g. the web server's threads) from
# restoring each other's value halfway through a decode.
_PIL_LIMIT_LOCK = threading.Lock()


# --- reading inputs ------------------------------------------------------------------------------------


def _bomb_message(source: str, pixels: int, max_pixels: int) -> str:
    return (f"refusing to decode {source}: it has {pixels:,} pixels, more than the limit of {max_pixels:,} "
            "(a protection against decompression bombs). If the image is genuine, raise the limit "
            "(--max-pixels / max_pixels=).")


@contextmanager
def _pil_pixel_limit(max_pixels: int) -> Iterator[None]:
    """Run with PIL's own decompression-bomb limit set to ``max_pixels`` and its warning made an error."""
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        # PIL only *warns* between 1x and 2x its limit; a warning would let the decode go ahead.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def read_image_limited(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """``fcnseg.data.io.read_image``, refusing files of more than ``max_pixels`` pixels before decoding.

    Raises ``DataError`` naming the file for unreadable files and for images over the limit.
    """
    path = Path(path)
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    with _pil_pixel_limit(max_pixels):
        try:
            # Opening reads only the header; PIL checks the size against MAX_IMAGE_PIXELS right there.
            with Image.open(path) as img:
                width, height = img.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(_bomb_message(str(path), _header_pixels(path), max_pixels)) from None
        except Exception:  # noqa: BLE001 - read_image below turns every unreadable file into a DataError
            width = height = 0
        if width * height > max_pixels:
            raise DataError(_bomb_message(str(path), width * height, max_pixels))
        try:
            return read_image(path)
        except Image.DecompressionBombWarning:  # frames or tiles larger than the header said
            raise DataError(_bomb_message(str(path), _header_pixels(path), max_pixels)) from None


def _header_pixels(path: Path) -> int:
    """The pixel count from an image header, with PIL's bomb check switched off (caller holds the lock)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as img:
            return img.size[0] * img.size[1]
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _pil_to_rgb(img: Image.Image, max_pixels: int) -> np.ndarray:
    """A PIL image as an HxWx3 uint8 RGB array, converted the way ``read_image`` converts files.

    EXIF orientation applied, then :func:`fcnseg.data.io.image_to_rgb`.
    """
    pixels = img.size[0] * img.size[1]
    if pixels > max_pixels:  # an Image.open() result is still undecoded: refuse before load()
        raise ValueError(_bomb_message(f"the {img.size[0]}x{img.size[1]} PIL image", pixels, max_pixels))
    return image_to_rgb(ImageOps.exif_transpose(img), "the PIL image")


def to_rgb_array(image: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any accepted input (file path, PIL image, HxWx3 uint8 array) as an HxWx3 uint8 RGB array.

    Files and PIL images over ``max_pixels`` are refused before decoding; arrays are already decoded, so
    they are taken as they are.
    """
    if isinstance(image, str | os.PathLike):
        return read_image_limited(image, max_pixels)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, max_pixels)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}; "
                             "convert it with e.g. np.asarray(PIL.Image.open(path).convert('RGB'))")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"the image array is empty (shape {image.shape})")
        return image
    raise TypeError(f"cannot segment a {type(image).__name__}: pass a file path (str or Path), a PIL image "
                    "or an HxWx3 uint8 RGB numpy array")


# --- the segmenter -------------------------------------------------------------------------------------


class Segmenter:
    """A model ready for inference, with everything needed to read its inputs and show its outputs.

    Attributes: ``model`` (the torch module, or None for a non-torch backend), ``forward`` (callable
    mapping a normalised N x 3 x h x w tensor to N x C x h x w logits), ``info`` (DatasetInfo: class
    names, palette), ``normalization`` ("imagenet" or "caffe"), ``device`` and ``max_pixels`` (image
    files larger than this are refused before decoding).
    """

    def __init__(self, model: torch.nn.Module | None, info: DatasetInfo, normalization: str,
                 device: str | torch.device = "cpu", forward: Forward | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {normalization!r}; choose one of {NORMALIZATIONS}")
        if model is None and forward is None:
            raise ValueError("Segmenter needs a model or a forward callable")
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        self.device = resolve_device(device)
        self.model = model
        if model is not None:
            model.to(self.device).eval()
        self.forward: Forward = forward if forward is not None else model
        self.info = info
        self.normalization = normalization
        self.max_pixels = max_pixels

    @classmethod
    def from_forward(cls, forward: Forward, info: DatasetInfo, normalization: str,
                     device: str | torch.device = "cpu", max_pixels: int = DEFAULT_MAX_PIXELS) -> Segmenter:
        """A Segmenter around any forward callable (e.g. an ONNX Runtime session wrapper)."""
        return cls(None, info, normalization, device=device, forward=forward, max_pixels=max_pixels)

    @property
    def label_dtype(self) -> type:
        """uint8 while every class index fits in a byte, else int64."""
        return np.uint8 if self.info.num_classes <= 256 else np.int64

    def _checked_forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.forward(x)
        if logits.dim() != 4 or logits.shape[1] != self.info.num_classes or logits.shape[2:] != x.shape[2:]:
            raise ValueError(
                f"the model returned scores of shape {tuple(logits.shape)} for input {tuple(x.shape)}, but "
                f"{self.info.num_classes} classes ({self.info.name}) at the input size were expected: the "
                "model and its class metadata do not match"
            )
        return logits

    def _autocast(self, autocast: str | None):
        if autocast is None:
            return nullcontext()
        if autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"unknown autocast {autocast!r}; choose None or one of {sorted(AUTOCAST_DTYPES)}")
        if self.model is None:
            raise ValueError("autocast applies to torch models only, not to this backend")
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[autocast])

    def _run(self, arrays: Sequence[np.ndarray], return_probs: bool, autocast: str | None,
             batch_size: int, options: dict[str, Any]) -> list[Any]:
        """Segment equal-sized arrays as one batch."""
        batch = torch.stack([normalize(a, self.normalization) for a in arrays]).to(self.device)
        with torch.inference_mode(), self._autocast(autocast):
            if return_probs:
                probs = predict_probs(self._checked_forward, batch, batch_size=batch_size, **options).float()
                labels = probs.argmax(1)
                probs_np = probs.cpu().numpy()
            else:
                labels = predict_labels(self._checked_forward, batch, batch_size=batch_size, **options)
        labels_np = labels.cpu().numpy().astype(self.label_dtype)
        if return_probs:
            return [(labels_np[i], probs_np[i]) for i in range(len(arrays))]
        return list(labels_np)

    def predict(self, image: ImageInput, return_probs: bool = False, mode: str = "whole",
                window: tuple[int, int] = (512, 512), overlap: float = 1 / 3, flip: bool = False,
                scales: Sequence[float] = (1.0,), autocast: str | None = None):
        """Segment one image.

        Args:
            image: a file path, a PIL image or an HxWx3 uint8 RGB numpy array.
            return_probs: also return the C x H x W float32 softmax probabilities.
            mode: ``"whole"`` (one forward pass) or ``"slide"`` (``window``-sized tiles overlapping by
                ``overlap``; bounded memory for large images).
            flip: average with the horizontally flipped prediction.
            scales: average over these input scales.
            autocast: ``None`` or ``"bf16"`` (run under ``torch.autocast`` in bfloat16).

        Returns:
            The HxW label map at the image's size (uint8 for up to 256 classes, else int64), or
            ``(labels, probs)`` with ``return_probs``.
        """
        array = to_rgb_array(image, self.max_pixels)
        options = {"mode": mode, "window": tuple(window), "overlap": overlap, "flip": flip, "scales": tuple(scales)}
        return self._run([array], return_probs, autocast, 4, options)[0]

    def predict_batch(self, images: Sequence[ImageInput], batch_size: int = 4, return_probs: bool = False,
                      mode: str = "whole", window: tuple[int, int] = (512, 512), overlap: float = 1 / 3,
                      flip: bool = False, scales: Sequence[float] = (1.0,), autocast: str | None = None) -> list:
        """Segment several images; returns one result per image, in order, as :meth:`predict` would.

        Images of equal size go through the network together, ``batch_size`` at a time; images of
        different sizes are processed separately (no padding, so no padding artefacts).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        arrays = [to_rgb_array(image, self.max_pixels) for image in images]
        options = {"mode": mode, "window": tuple(window), "overlap": overlap, "flip": flip, "scales": tuple(scales)}
        groups: dict[tuple[int, int], list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape[:2], []).append(index)
        results: list[Any] = [None] * len(arrays)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start:start + batch_size]
                outputs = self._run([arrays[i] for i in chunk], return_probs, autocast, batch_size, options)
                for i, output in zip(chunk, outputs, strict=True):
                    results[i] = output
        return results


def load(path: str | os.PathLike, device: str | torch.device = "cpu",
         max_pixels: int = DEFAULT_MAX_PIXELS) -> Segmenter:
    """Load an fcnseg checkpoint as a :class:`Segmenter` (in eval mode, on ``device``).

    Files that are not fcnseg checkpoints raise ``WeightsError`` saying what they are.
    """
    model, info = model_from_checkpoint(path)
    return Segmenter(model, info, model.backbone.input_normalization, device=device, max_pixels=max_pixels)


# --- command line --------------------------------------------------------------------------------------

OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png", "_side_by_side.png", "_legend.png", "_probs.npy")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``fcnseg predict`` to the top-level CLI."""
    parser = subparsers.add_parser(
        "predict", help="segment images with a trained model",
        description="Segment images and write, per input STEM: STEM_mask.png (palette PNG of class indices), "
                    "STEM_overlay.png, STEM_side_by_side.png (image | overlay | mask), STEM_legend.png and "
                    "with --probs STEM_probs.npy (C x H x W float16). Unreadable images are reported at "
                    "the end (exit code 1) after the others are processed.")
    parser.add_argument("checkpoint", help="fcnseg checkpoint (.pt), or an .onnx file with --backend onnxruntime")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders (their images, sorted, not recursive) or glob patterns")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity of the class colours (0-1)")
    parser.add_argument("--probs", action="store_true", help="also write STEM_probs.npy (C x H x W float16)")
    parser.add_argument("--mode", choices=("whole", "slide"), default="whole",
                        help="whole image at once, or sliding windows (bounded memory for large images)")
    parser.add_argument("--window", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="sliding window size")
    parser.add_argument("--overlap", type=float, default=1 / 3, help="sliding window overlap fraction")
    parser.add_argument("--flip", action="store_true", help="average with the horizontally flipped image")
    parser.add_argument("--scales", type=float, nargs="+", default=(1.0,), help="average over these scales")
    parser.add_argument("--batch-size", type=int, default=4, help="images (or windows) per forward pass")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--bf16", action="store_true", help="run under bfloat16 autocast (torch backend)")
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch",
                        help="torch checkpoint, or an ONNX file run by ONNX Runtime")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse images with more pixels than this, before decoding (decompression bombs)")
    parser.set_defaults(func=run)
    return parser


def _has_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (images inside, sorted, non-recursive) and glob patterns -> a list of files.

    Raises DataError for a path that does not exist, a folder without images or a pattern matching nothing.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif _has_glob(item):
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
            if not found:
                raise DataError(f"no files match the pattern {item!r}")
            files.extend(found)
        else:
            raise DataError(f"input not found: {path}")
    # The same file named twice (say, by a folder and a pattern) is segmented once.
    unique = list(dict.fromkeys(files))
    stems: dict[str, Path] = {}
    for file in unique:
        if file.stem in stems:
            raise DataError(f"inputs {stems[file.stem]} and {file} would both write {file.stem}_*.png: "
                            "rename one or segment them in separate runs")
        stems[file.stem] = file
    return unique


def _save_npy_atomically(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as handle:
        np.save(handle, array)


def write_outputs(out: Path, stem: str, image: np.ndarray, labels: np.ndarray, info: DatasetInfo,
                  opacity: float = 0.5, probs: np.ndarray | None = None) -> list[Path]:
    """Write the mask, overlay, side-by-side, legend (and probabilities) of one image; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    overlaid = viz.overlay(image, labels, info, opacity)
    paths = [out / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES]
    viz.save_index_png(paths[0], labels, info)
    viz.save_png(paths[1], overlaid)
    viz.save_png(paths[2], viz.side_by_side([image, overlaid, viz.colorize(labels, info)]))
    viz.save_png(paths[3], viz.legend(viz.present_classes(labels, info), info))
    if probs is None:
        return paths[:4]
    _save_npy_atomically(paths[4], probs.astype(np.float16))
    return paths


def _segmenter_from_args(args: argparse.Namespace) -> Segmenter:
    if args.backend == "onnxruntime":
        if args.bf16:
            raise ValueError("--bf16 applies to the torch backend only; ONNX Runtime runs the exported precision")
        from fcnseg.export import load_onnx  # lazily: onnxruntime is optional

        forward, info, normalization = load_onnx(args.checkpoint)
        return Segmenter.from_forward(forward, info, normalization, device=args.device, max_pixels=args.max_pixels)
    return load(args.checkpoint, device=args.device, max_pixels=args.max_pixels)


def run(args: argparse.Namespace) -> int:
    """``fcnseg predict``: 0 when every image was segmented, 1 when some could not be read."""
    if not 0.0 <= args.opacity <= 1.0:
        raise ValueError(f"--opacity must be between 0 and 1, got {args.opacity}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_pixels < 1:
        raise ValueError(f"--max-pixels must be positive, got {args.max_pixels}")
    files = expand_inputs(args.inputs)
    segmenter = _segmenter_from_args(args)
    if segmenter.info.num_classes > 256:
        raise ValueError(f"{segmenter.info.name} has {segmenter.info.num_classes} classes; mask PNGs and "
                         "overlays hold at most 256. Use the Python API (fcnseg.predict.load) instead.")
    options = {"mode": args.mode, "window": tuple(args.window), "overlap": args.overlap, "flip": args.flip,
               "scales": tuple(args.scales), "autocast": "bf16" if args.bf16 else None}
    failures: list[tuple[Path, str]] = []
    done = 0
    for start in range(0, len(files), args.batch_size):
        chunk, images = [], []
        for path in files[start:start + args.batch_size]:
            try:
                images.append(read_image_limited(path, args.max_pixels))
                chunk.append(path)
            except DataError as exc:
                failures.append((path, str(exc)))
                done += 1
                print(f"[{done}/{len(files)}] {path.name} FAILED: {exc}", file=sys.stderr)
        if not images:
            continue
        began = time.perf_counter()
        results = segmenter.predict_batch(images, batch_size=args.batch_size, return_probs=args.probs, **options)
        # Images of one batch share a forward pass, so each is charged an equal part of its time.
        seconds = (time.perf_counter() - began) / len(images)
        for path, image, result in zip(chunk, images, results, strict=True):
            labels, probs = result if args.probs else (result, None)
            write_outputs(args.out, path.stem, image, labels, segmenter.info, args.opacity, probs)
            done += 1
            print(f"[{done}/{len(files)}] {path.name} {image.shape[1]}x{image.shape[0]} {seconds:.2f} s",
                  file=sys.stderr)
    if failures:
        print(f"fcnseg predict: {len(failures)} of {len(files)} inputs could not be segmented:", file=sys.stderr)
        for path, message in failures:
            print(f"  {path}: {message}", file=sys.stderr)
        return 1
    print(f"fcnseg predict: wrote results for {len(files)} images to {args.out}", file=sys.stderr)
    return 0
