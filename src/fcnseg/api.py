"""The Python API: ``fcnseg.load(path)`` gives a :class:`Segmenter` that segments images.

    seg = fcnseg.load("runs/camvid/fcn8s/best.pth")           # or an .onnx file exported by fcnseg
    labels = seg.predict("street.jpg")                        # HxW class indices at the image's size
    probs = seg.predict_probs(pil_image, mode="slide")         # C x H x W float32 softmax probabilities
    many = seg.predict_batch(["a.png", "b.png"])               # one label map per image, in order
    maps = seg.predict_heads("scene.jpg")                      # a net with several heads: {task: HxW labels}
    rgbd = seg.predict("room.png", depth="room_depth.png")     # a NYUDv2 colour-HHA net: colour + depth

Checkpoints and exports carry the net's spec (architecture, inputs and their normalisation, class names,
palette), so nothing has to be restated. Images come through :func:`fcnseg.data.io.decode_image` (a path,
image bytes, a PIL image or an HxWx3 uint8 array; files over ``max_pixels`` are refused before decoding);
inference itself (whole image or sliding window, flips, scales) is :mod:`fcnseg.inference`. Nets that read
depth (the authors' NYUDv2 HHA and colour-HHA nets) take a depth map (:func:`fcnseg.data.io.read_depth`), encoded as HHA
(:mod:`fcnseg.data.hha`) with ``intrinsics`` (NYUDv2's Kinect by default), or an HHA image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from fcnseg.checkpoint import model_from_checkpoint
from fcnseg.data.hha import hha_from_depth, intrinsics_for
from fcnseg.data.info import DatasetInfo, count_text
from fcnseg.data.io import DEFAULT_MAX_PIXELS, ImageSource, decode_image, open_image, read_depth
from fcnseg.errors import ConfigError, DataError, WeightsError, did_you_mean, require_model_file
from fcnseg.inference import InferenceOptions, predict_labels, predict_probs
from fcnseg.memory import default_budget, fit, parse_size
from fcnseg.models.spec import ModelSpec
from fcnseg.models.weights import file_kind
from fcnseg.normalization import normalize
from fcnseg.pretrained import resolve
from fcnseg.ranges import COUNT
from fcnseg.runtime import in_eval_mode, native_bf16, resolve_device

log = logging.getLogger(__name__)
Forward = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = ("auto", "torch", "onnxruntime")
DepthSource = str | os.PathLike | bytes | np.ndarray  # a depth image file (or its bytes), or HxW metres


class Segmenter:
    """A model ready for inference, with everything needed to read its inputs and show its outputs.

    Attributes: ``model`` (the torch module, or None for an export), ``forward`` (callable mapping
    a normalised N x 3 x h x w tensor, 3 channels per input, to N x C x h x w logits), ``spec`` (the net's
    :class:`~fcnseg.models.spec.ModelSpec`: architecture, inputs and their normalisation, classes) and what
    follows from it: ``info`` (class names, palette), ``normalization``, ``inputs`` (``("rgb",)``, ``("hha",)``
    or ``("rgb", "hha")``) and ``config`` (the architecture); ``device``, ``options`` (the default
    :class:`~fcnseg.inference.InferenceOptions`, or a mapping of its fields; every call may override fields by
    keyword), ``max_pixels`` (image files larger than this are refused before decoding) and ``max_memory`` (bytes a
    prediction may use, or a size such as "6G"; None: 80% of the memory available when it runs). A prediction
    whose estimate (:mod:`fcnseg.memory`) exceeds it runs in sliding windows instead, which a note logged on
    ``fcnseg.api`` says (:meth:`note`), or is refused with a :class:`~fcnseg.errors.LimitError` when nothing fits.
    For depth: ``intrinsics`` (fx, fy, cx, cy; None: NYUDv2's camera, by frame size) and ``depth_scale``
    (metres per unit of a depth image file: 0.001 for millimetres).

    A ``model`` handed in is moved to ``device`` and its weights to channels-last memory format (same values);
    its training mode is left as it is (each pass runs in eval mode, one pass at a time), so the code that
    trains it can go on training.
    """

    def __init__(self, model: torch.nn.Module | None, spec: ModelSpec, device: str | torch.device = "auto",
                 forward: Forward | None = None, options: InferenceOptions | Mapping[str, Any] | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_memory: int | str | None = None) -> None:
        if model is None and forward is None:
            raise ConfigError("Segmenter needs a model or a forward callable")
        if isinstance(max_memory, str):  # "6G", as the commands' --max-memory takes it
            try:
                max_memory = parse_size(max_memory)
            except ConfigError as error:
                raise ConfigError(f"max_memory: {error}") from None
        for field, value in (("max_pixels", max_pixels), ("max_memory", max_memory)):
            # -5 was taken, then every image was refused as too large; "4G", nan and a list failed later, or not
            if value is not None and value not in COUNT:
                meaning = "pixels, or None (no limit)" if field == "max_pixels" else \
                    "bytes, or None (80% of the memory free)"
                raise ConfigError(f"{field} must be a positive whole number of {meaning}, got {value!r}")
        if options is not None and not isinstance(options, InferenceOptions | Mapping):
            raise ConfigError(f"options must be an InferenceOptions or a mapping of its fields ({{'flip': True}}), "
                              f"got a {type(options).__name__}")
        self.spec = spec.with_classes(None)
        self.device = resolve_device(device)
        self.model = model
        self.forward: Forward = forward if forward is not None else model
        if isinstance(self.forward, torch.nn.Module):  # a checkpoint's net or a TorchScript export
            self.forward.to(self.device)  # its mode is left as it is: each pass runs it in eval mode (scores)
        self._passes = threading.Lock()  # see scores
        # Channels-last convolutions: 1.15-1.4x faster on the CPU, equal to float rounding (docs/performance.md).
        self.channels_last = model is not None and forward is None
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        # A plain mapping is read as the options' fields: {"flip": True} as InferenceOptions(flip=True).
        self.options = InferenceOptions(**options) if isinstance(options, Mapping) else options or InferenceOptions()
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.max_memory = None if max_memory is None else int(max_memory)
        self._told: set[str] = set()  # notes already logged: each once per Segmenter
        self.intrinsics: Sequence[float] | None = None
        self.depth_scale = 0.001
        self._options({})  # bf16 needs a torch model

    @property
    def info(self) -> DatasetInfo:
        """The classes the net scores (names, palette, ignore index; one label set per head)."""
        return self.spec.classes

    @property
    def normalization(self) -> str:
        """How images are normalised for the net (one ``+``-joined part per input)."""
        return self.spec.normalization_text

    @property
    def inputs(self) -> tuple[str, ...]:
        """What the net reads: ``("rgb",)``, ``("hha",)`` or ``("rgb", "hha")``."""
        return self.spec.inputs

    @property
    def config(self) -> dict[str, Any]:
        """The net's architecture (build_model's arguments)."""
        return self.spec.architecture()

    @property
    def title(self) -> str:
        """How reports and the web page name the net: "fcn8s (vgg16_bn)", "fcn8s (vgg16_bn, int8)"."""
        quantised = "" if self.precision == "float32" else f", {self.precision}"
        return f"{self.spec.name} ({self.spec.backbone}{quantised})"

    @property
    def precision(self) -> str:
        """What the weights compute in: "float32", or "int8" for a quantised ONNX export."""
        return getattr(self.forward, "precision", "float32")

    def note(self, text: str) -> None:
        """Log ``text`` once (INFO on the ``fcnseg.api`` logger; ``fcnseg`` commands print it, ``--quiet`` hides
        it; a program routes or silences it with :mod:`logging`)."""
        if text not in self._told:
            self._told.add(text)
            log.info("note: %s", text)

    @property
    def label_dtype(self) -> type:
        """uint8 while every class index fits in a byte, else int64."""
        return np.uint8 if max(self.info.head_classes) <= 256 else np.int64

    def predict(self, image: ImageSource | None, name: str | None = None, depth: DepthSource | None = None,
                hha: ImageSource | None = None, on_forward: Callable[[], None] | None = None,
                **options: Any) -> np.ndarray:
        """The HxW label map of one image (uint8 up to 256 classes, else int64); of its first head for a net
        with several (:meth:`predict_heads` gives them all).

        ``image``: a file path, the bytes of an image file, a PIL image or an HxWx3 uint8 RGB array (None for
        a net that reads only depth); a file's EXIF orientation is applied, a PIL image is taken as stored, so
        that the labels line up with it (:func:`~fcnseg.data.io.decode_image`). ``depth``: for nets that read
        it, a depth map (an image file of depth values, ``depth_scale`` metres per unit, or an HxW array of
        metres) or ``hha``: its HHA image.
        ``options``: fields of :class:`~fcnseg.inference.InferenceOptions` for this call (mode, window,
        overlap, flip, scales, batch_size, bf16). ``name`` names the image in notes and errors. ``on_forward``
        is called before each forward pass of the net (one per window in slide mode, per flip and scale); what
        it raises stops the prediction there (``fcnseg serve`` stops the work of a client that went away).
        """
        return self.predict_batch([image], names=[name] if name else None, depths=[depth], hhas=[hha],
                                  on_forward=on_forward, **options)[0]

    def predict_heads(self, image: ImageSource | None, name: str | None = None, depth: DepthSource | None = None,
                      hha: ImageSource | None = None, **options: Any) -> dict[str, np.ndarray]:
        """Every head's HxW label map of one image, by task ({"semantic": ...} for a net with one head;
        SIFT Flow's nets add "geometric"), from one pass of the net. Arguments as :meth:`predict`'s."""
        name = name or _name(image)
        labels = self._label_maps([self._decode(image, depth, hha, name)], [name], self._options(options))[0]
        maps = labels if labels.ndim == 3 else labels[None]
        return {head.task: head_map for head, head_map in zip(self.info.heads, maps, strict=True)}

    def labels_from_probs(self, probs: np.ndarray) -> list[np.ndarray]:
        """Each head's HxW label map from :meth:`predict_probs`' C x H x W output (the argmax of its channels; a
        torch tensor is taken too)."""
        if isinstance(probs, torch.Tensor):
            probs = probs.detach().cpu().numpy()
        if np.ndim(probs) != 3 or len(probs) != sum(self.info.head_classes):
            raise ConfigError(f"expected C x H x W probabilities with C = {sum(self.info.head_classes)} (this net's "
                              f"classes), got shape {np.shape(probs)}")
        parts = np.split(probs, np.cumsum(self.info.head_classes)[:-1])
        return [part.argmax(0).astype(self.label_dtype) for part in parts]

    def predict_probs(self, image: ImageSource | None, name: str | None = None, depth: DepthSource | None = None,
                      hha: ImageSource | None = None, **options: Any) -> np.ndarray:
        """The C x H x W float32 softmax probabilities of one image; their argmax is :meth:`predict`. For a
        net with several heads, C is their classes together, each head's channels holding its own softmax.
        Arguments as :meth:`predict`'s."""
        name = name or _name(image)
        array = self._decode(image, depth, hha, name)
        chosen = self.plan(1, *array.shape[:2], self._options(options), probs=True, name=name)
        with torch.inference_mode():
            probs = predict_probs(self.scores, self._tensor([array]), chosen, heads=self.info.head_classes)
        return probs[0].float().cpu().numpy()

    def plan(self, batch: int, height: int, width: int, options: InferenceOptions | None = None,
             probs: bool = False, name: str = "the image") -> InferenceOptions:
        """``options`` made to fit the memory budget (see :func:`fcnseg.memory.fit`) for ``batch`` images of
        ``height x width``."""
        options = options or self.options
        budget = self.max_memory if self.max_memory is not None else default_budget(self.device)
        fitted, note = fit(self.spec, batch, height, width, options, budget, probs,
                           name, channels_last=self.channels_last)
        if note:
            self.note(note)
        return fitted

    def predict_batch(self, images: Sequence[ImageSource | None], names: Sequence[str] | None = None,
                      depths: Sequence[DepthSource | None] | None = None,
                      hhas: Sequence[ImageSource | None] | None = None, on_forward: Callable[[], None] | None = None,
                      **options: Any) -> list[np.ndarray]:
        """The label maps of several images, in order (of the first head, for a net with several).
        ``depths`` / ``hhas``: one per image, for nets that read depth; ``on_forward``: see :meth:`predict`.

        Images are decoded ``batch_size`` at a time, in order (a list of a thousand photos is never in memory
        at once); of those, images of equal size go through the network together, and images of different sizes
        are never padded together (padding would change the predictions near borders).
        """
        if isinstance(images, str | bytes | os.PathLike | np.ndarray) or not isinstance(images, Sequence):
            raise TypeError(f"predict_batch takes a list of images, got a {type(images).__name__}")
        chosen = self._options(options)
        names = list(names) if names else [_name(image) for image in images]
        depths, hhas = depths or [None] * len(images), hhas or [None] * len(images)
        if not len(images) == len(depths) == len(hhas) == len(names):
            raise ConfigError(f"{len(images)} images but {len(names)} names, {len(depths)} depth maps and "
                              f"{len(hhas)} HHA images: give one of each per image")
        sources, maps = list(zip(images, depths, hhas, names, strict=True)), []
        for start in range(0, len(sources), chosen.batch_size):
            chunk = sources[start:start + chosen.batch_size]
            maps += self._label_maps([self._decode(*each) for each in chunk], [each[3] for each in chunk], chosen,
                                     on_forward)
        return [labels if labels.ndim == 2 else labels[0] for labels in maps]

    def _label_maps(self, arrays: list[np.ndarray], names: list[str], chosen: InferenceOptions,
                    on_forward: Callable[[], None] | None = None) -> list[np.ndarray]:
        """HxW label maps (K x H x W for K heads) of decoded images, equal sizes batched together."""
        forward = self.scores if on_forward is None else _after(on_forward, self.scores)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, array in enumerate(arrays):
            groups.setdefault(array.shape[:2], []).append(index)
        results: list[Any] = [None] * len(arrays)
        with torch.inference_mode():
            for indices in groups.values():
                for start in range(0, len(indices), chosen.batch_size):
                    chunk = indices[start:start + chosen.batch_size]
                    planned = self.plan(len(chunk), *arrays[chunk[0]].shape[:2], chosen, name=names[chunk[0]])
                    labels = predict_labels(forward, self._tensor([arrays[i] for i in chunk]), planned,
                                            heads=self.info.head_classes)
                    for i, label in zip(chunk, labels.cpu().numpy().astype(self.label_dtype), strict=True):
                        results[i] = label
        return results

    def _options(self, changes: dict[str, Any]) -> InferenceOptions:
        known = [field.name for field in dataclasses.fields(InferenceOptions)]
        unknown = sorted(set(changes) - set(known))
        if unknown:  # TypeError: a wrong keyword argument, as Python says it, with the fields to choose from
            raise TypeError(f"unknown option(s) {', '.join(unknown)}{did_you_mean(unknown, known)}; the options are "
                            f"{', '.join(known)}")
        options = self.options.replace(**changes)
        if options.bf16 and self.model is None:
            raise ConfigError("bf16 applies to checkpoints only; an export runs in the precision it was exported in")
        if options.bf16 and not native_bf16(self.device):
            self.note(f"bf16 is emulated on this {self.device.type.upper()} (no AVX512-BF16 or AMX): it runs "
                        "slower than float32 here (0.23x measured on an AVX2 CPU); leave --bf16 out")
        return options

    def _decode(self, image: ImageSource | None, depth: DepthSource | None = None, hha: ImageSource | None = None,
                name: str = "the image") -> np.ndarray:
        """The net's input for one image: its colour image, its HHA image, or both stacked (HxWx6)."""
        if isinstance(image, list | tuple):
            raise TypeError(f"predict takes one image, got a {type(image).__name__}: use predict_batch for several")
        if "hha" not in self.inputs and (depth is not None or hha is not None):
            raise ConfigError(f"this net reads colour images only; it has no use for a depth map ({name})")
        if "rgb" in self.inputs and image is None:
            raise ConfigError("this net reads a colour image: pass one")
        parts = [decode_image(image, self.max_pixels) if kind == "rgb" else self._hha(depth, hha, name)
                 for kind in self.inputs]
        if len(parts) > 1:
            check_same_frame(parts[0].shape, parts[1].shape, f"the colour image of {name}")
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def _hha(self, depth: DepthSource | None, hha: ImageSource | None, name: str) -> np.ndarray:
        """The HHA image given, or computed from the depth map given."""
        if (depth is None) == (hha is None):
            raise ConfigError(f"this net reads depth: give a depth map or an HHA image for {name} (one of them)")
        if hha is not None:
            # A 16-bit depth map was taken as an HHA image (grey, scaled to 8 bits), from a file or a PIL image.
            opened = open_image(hha, "HHA image", self.max_pixels) if isinstance(hha, str | os.PathLike | bytes) \
                else hha
            if isinstance(opened, Image.Image) and opened.mode not in ("RGB", "RGBA"):
                raise DataError(f"{_name(hha)} is a {opened.mode} image, but HHA images have three 8-bit channels "
                                "(disparity, height, angle): for a depth map give depth= (fcnseg predict --depth)")
            return decode_image(opened, self.max_pixels)
        metres = read_depth(depth, self.depth_scale, self.max_pixels)
        return hha_from_depth(metres, intrinsics_for(*metres.shape, self.intrinsics))

    def _tensor(self, arrays: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.stack([normalize(a, self.normalization) for a in arrays]).to(self.device)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of a normalised N x 3 x H x W batch, checked against the classes and the input size."""
        module = self.forward if isinstance(self.forward, torch.nn.Module) else None
        # A module's mode is switched for the pass: one pass at a time. An export's session runs passes at once.
        with self._passes if module is not None else contextlib.nullcontext(), in_eval_mode(module):
            logits = self.forward(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)
        classes = sum(self.info.head_classes)
        if logits.dim() != 4 or logits.shape[1] != classes or logits.shape[2:] != x.shape[2:]:
            raise WeightsError(
                f"the model returned scores of shape {tuple(logits.shape)} for input {tuple(x.shape)}, but "
                f"{count_text(self.info.head_classes)} classes ({self.info.name}) at the input size were expected: "
                "the model and its class metadata do not match")
        return logits


def check_same_frame(colour: Sequence[int], depth: Sequence[int], name: str) -> None:
    """A DataError unless a colour image and its depth (or the labels drawn on it) have one height and width."""
    if tuple(colour[:2]) != tuple(depth[:2]):
        raise DataError(f"{name} is {colour[1]}x{colour[0]} but its depth {depth[1]}x{depth[0]}: they must be of the "
                        "same frame")


def _after(first: Callable[[], None], forward: Forward) -> Forward:
    """``forward`` that calls ``first()`` before each pass."""
    def checked(x: torch.Tensor) -> torch.Tensor:
        first()
        return forward(x)

    return checked


def _name(image: ImageSource | None) -> str:
    return f"image {image}" if isinstance(image, str | os.PathLike) else "the image"


def load(path: str | os.PathLike, device: str | torch.device = "auto", backend: str = "auto",
         options: InferenceOptions | Mapping[str, Any] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
         max_memory: int | str | None = None) -> Segmenter:
    """Load an fcnseg checkpoint, or a TorchScript or ONNX export of one, as a :class:`Segmenter`; ``path`` may
    also name a net shipped with fcnseg (see :mod:`fcnseg.pretrained`; a file of that name wins).

    ``backend="auto"`` tells the three apart by content; ``"torch"`` takes checkpoints and TorchScript,
    ``"onnxruntime"`` ONNX files. Other files raise :class:`~fcnseg.errors.WeightsError` saying what they are.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    path = require_model_file(resolve(path))
    kind = file_kind(path)
    if backend != "auto" and (kind == "onnx") != (backend == "onnxruntime"):
        raise ConfigError(f"{path} is {'an ONNX model' if kind == 'onnx' else 'not an ONNX model'}, so --backend "
                          f"{backend} cannot run it; leave --backend out (auto) to choose by the file")
    if kind in ("onnx", "torchscript"):
        from fcnseg.export import load_export  # onnxruntime is optional: imported only when asked for

        forward, spec = load_export(path, threads=torch.get_num_threads())
        return Segmenter(None, spec, device=device, forward=forward, options=options, max_pixels=max_pixels,
                         max_memory=max_memory)
    model, _ = model_from_checkpoint(path)
    return Segmenter(model, model.spec, device=device, options=options, max_pixels=max_pixels, max_memory=max_memory)
