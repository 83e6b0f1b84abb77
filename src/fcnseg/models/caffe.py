"""The authors' trained nets, read from their ``.caffemodel`` files without Caffe.

A ``.caffemodel`` is a protobuf ``NetParameter``: the net's name (field 1) and its layers, as
``LayerParameter`` (field 100: name 1, type 2, blobs 7) or, in older files, ``V1LayerParameter`` (field 2:
name 4, type 5 as an enum, blobs 6). A ``BlobProto`` holds its shape (field 7, a ``BlobShape`` of int64
dims in field 1; older files give num/channels/height/width in fields 1-4) and its values as float32
(field 5) or float64 (field 8), packed or not. This module decodes exactly that much of the protobuf wire
format. The file is memory-mapped and packed values are viewed in place, so a 500 MB file is never held
twice: the only copy made is the weight tensor itself.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fcnseg.errors import WeightsError, require_model_file

# Wire types of the protobuf encoding.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# V1LayerParameter.LayerType values of the layers that carry blobs in an FCN.
V1_TYPES = {4: "Convolution", 39: "Deconvolution", 14: "InnerProduct", 18: "ReLU", 17: "Pooling", 6: "Dropout",
            15: "LRN", 25: "Eltwise", 22: "Split", 5: "Data", 21: "SoftmaxWithLoss", 20: "Softmax"}
_UNPACKED = {FIXED32: (np.dtype([("tag", "u1"), ("value", "<f4")]), 5),
             FIXED64: (np.dtype([("tag", "u1"), ("value", "<f8")]), 9)}


@dataclass
class CaffeLayer:
    """A layer of a Caffe net: its name, its type and its parameter blobs (in Caffe's order)."""

    name: str
    type: str
    blobs: list[np.ndarray]


class _WireError(WeightsError):
    """The bytes are not the protobuf a .caffemodel holds."""


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _WireError(f"a varint runs past its message at byte {pos}")
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field, wire type, value or payload start, payload end)`` of each field in ``buf[start:end]``."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError(f"field number 0 at byte {pos}")
        if wire == VARINT:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, pos
            continue
        if wire == LENGTH:
            size, pos = _varint(buf, pos, end)
            payload = (pos, pos + size)
        elif wire in (FIXED64, FIXED32):
            payload = (pos, pos + (8 if wire == FIXED64 else 4))
        else:
            raise _WireError(f"wire type {wire} (groups) at byte {pos}: not a caffemodel")
        if payload[1] > end:
            raise _WireError(f"a field runs past its message at byte {pos}")
        pos = payload[1]
        yield field, wire, payload[0], payload[1]


def _unpacked_run(buf: mmap.mmap, start: int, end: int, wire: int, tag: int) -> tuple[np.ndarray, int]:
    """A run of unpacked repeated float32/float64 fields starting at ``start`` (the first tag byte):
    ``(values, end of the run)``, read as strided records instead of one field at a time."""
    record, size = _UNPACKED[wire]
    candidates = (end - start) // size
    tags = np.frombuffer(buf, dtype=np.uint8, count=candidates * size, offset=start)[::size]
    run = int(np.argmin(tags == tag)) if not (tags == tag).all() else candidates
    values = np.frombuffer(buf, dtype=record, count=run, offset=start)["value"]
    return values, start + run * size


def _dims(buf: mmap.mmap, start: int, end: int) -> list[int]:
    dims = []
    for field, wire, a, b in _fields(buf, start, end):
        if field == 1 and wire == VARINT:
            dims.append(a)
        elif field == 1 and wire == LENGTH:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                dims.append(value)
    return dims


def _blob(buf: mmap.mmap, start: int, end: int) -> np.ndarray:
    """One BlobProto as an array of its shape (a view on the file where the values are packed)."""
    shape, legacy, chunks = None, {}, []
    pos = start
    while pos < end:
        tag_start = pos
        key, _ = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field in (5, 8) and wire in (FIXED32, FIXED64):  # unpacked values: a run of records at once
            values, pos = _unpacked_run(buf, tag_start, end, wire, buf[tag_start])
            chunks.append(values)
            continue
        field, wire, a, b = next(_fields(buf, tag_start, end))
        pos = b  # after the field (for a varint, ``a`` is its value)
        if field in (5, 8) and wire == LENGTH:
            dtype = np.dtype("<f4") if field == 5 else np.dtype("<f8")
            if (b - a) % dtype.itemsize:
                raise _WireError(f"blob data of {b - a} bytes is not whole {dtype} values")
            chunks.append(np.frombuffer(buf, dtype=dtype, count=(b - a) // dtype.itemsize, offset=a))
        elif field == 7 and wire == LENGTH:
            shape = _dims(buf, a, b)
        elif field in (1, 2, 3, 4) and wire == VARINT:
            legacy[field] = a
    if shape is None:
        shape = [legacy.get(k, 0) for k in (1, 2, 3, 4)] if legacy else [sum(len(c) for c in chunks)]
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if int(np.prod(shape)) != data.size:
        raise _WireError(f"a blob of shape {shape} holds {data.size} values")
    return data.reshape(shape)


def _layer(buf: mmap.mmap, start: int, end: int, v1: bool) -> CaffeLayer:
    name, kind, blobs = "", "", []
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    for field, wire, a, b in _fields(buf, start, end):
        if field == name_field and wire == LENGTH:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == type_field and wire == (VARINT if v1 else LENGTH):
            kind = V1_TYPES.get(a, f"V1 type {a}") if v1 else bytes(buf[a:b]).decode("utf-8", "replace")
        elif field == blob_field and wire == LENGTH:
            blobs.append(_blob(buf, a, b))
    return CaffeLayer(name, kind, blobs)


@contextmanager
def open_caffemodel(path: str | Path) -> Iterator[tuple[str, list[CaffeLayer]]]:
    """``(net name, layers)`` of a .caffemodel file; the blobs are views on the mapped file, valid only
    inside the ``with`` block (copy what you keep)."""
    path = require_model_file(path, "Caffe model", (".caffemodel",))
    with open(path, "rb") as handle:
        if path.stat().st_size == 0:
            raise WeightsError(f"{path} is empty, not a Caffe model")
        buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        name, layers = "", []
        for field, wire, a, b in _fields(buf, 0, len(buf)):
            if field == 1 and wire == LENGTH:
                name = bytes(buf[a:b]).decode("utf-8", "replace")
            elif field in (100, 2) and wire == LENGTH:
                layers.append(_layer(buf, a, b, v1=field == 2))
        if not any(layer.blobs for layer in layers):
            raise _WireError("no layer with weights")
        yield name, layers
    except _WireError as error:
        raise WeightsError(f"{path} is not a Caffe model (.caffemodel): {error}") from None
    finally:
        try:
            buf.close()
        except BufferError:  # a view escaped the block; the mapping goes when it does
            pass
