"""Caffe ``.caffemodel`` files -> NumPy arrays, with neither Caffe nor the ``protobuf`` package.

A ``.caffemodel`` is one binary ``caffe.NetParameter`` protocol buffer. This module decodes the protobuf
wire format directly (https://protobuf.dev/programming-guides/encoding/: varints, length-delimited fields,
fixed 32 / 64-bit fields, packed repeated fields) and reads only the fields that hold weights; every other
field is skipped by its wire type, so files carrying any layer parameters parse. Field numbers, as declared
in BVLC/caffe ``src/caffe/proto/caffe.proto``:

- ``NetParameter``: ``name`` 1 (string), ``layers`` 2 (``V1LayerParameter``, deprecated), ``layer`` 100
  (``LayerParameter``).
- ``LayerParameter``: ``name`` 1, ``type`` 2 (string, e.g. ``"Convolution"``), ``blobs`` 7.
- ``V1LayerParameter``: ``layer`` 1 (``V0LayerParameter``), ``name`` 4, ``type`` 5 (enum ``LayerType``),
  ``blobs`` 6. ``V0LayerParameter``: ``name`` 1, ``type`` 2 (string, e.g. ``"conv"``), ``blobs`` 50.
- ``BlobProto``: ``num`` 1, ``channels`` 2, ``height`` 3, ``width`` 4 (deprecated 4-d shape), ``data`` 5
  (packed float), ``shape`` 7 (``BlobShape``), ``double_data`` 8 (packed double).
  ``BlobShape``: ``dim`` 1 (packed int64).

As Caffe's ``Blob::FromProto``: a blob with any of the deprecated fields has the 4-d shape (num, channels,
height, width), else ``shape``; ``double_data`` wins over ``data``. Deprecated shapes are aligned at their
end (Caffe's ``LegacyShape``: a bias is 1 x 1 x 1 x N, an InnerProduct weight 1 x 1 x out x in), so they
are returned at the rank the layer type gives its blobs: Convolution / Deconvolution weights 4-d,
InnerProduct weights (out, in), biases (N,); other layers' blobs lose their leading 1s.

Blob data is decoded with ``np.frombuffer`` on the packed bytes of a memory-mapped file: each array is
one copy of its bytes, and the file itself is never copied.
"""
from __future__ import annotations

import dataclasses
import mmap
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

# Wire types (protobuf encoding spec).
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
WIRE_NAMES = {VARINT: "varint", I64: "64-bit", LEN: "length-delimited", SGROUP: "start-group",
              EGROUP: "end-group", I32: "32-bit"}

# caffe.proto field numbers (see the module docstring).
NET_NAME, NET_LAYERS_V1, NET_LAYER = 1, 2, 100
LAYER_NAME, LAYER_TYPE, LAYER_BLOBS = 1, 2, 7
V1_V0LAYER, V1_NAME, V1_TYPE, V1_BLOBS = 1, 4, 5, 6
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH, BLOB_DATA, BLOB_SHAPE, BLOB_DOUBLE_DATA = 1, 2, 3, 4, 5, 7, 8
SHAPE_DIM = 1

# V1LayerParameter.LayerType values -> the type names of LayerParameter (Caffe's V1 -> V2 upgrade names).
V1_TYPES = {
    0: "", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 7: "EuclideanLoss",
    8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData", 13: "InfogainLoss",
    14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling", 18: "ReLU", 19: "Sigmoid",
    20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 24: "WindowData", 25: "Eltwise", 26: "Power",
    27: "SigmoidCrossEntropyLoss", 28: "HingeLoss", 29: "MemoryData", 30: "ArgMax", 31: "Threshold",
    32: "DummyData", 33: "Slice", 34: "MVN", 35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp",
    39: "Deconvolution"}
# V0 type strings of the layers that have weights.
V0_TYPES = {"conv": "Convolution", "innerproduct": "InnerProduct"}
# Rank of (layer type, blob index) for deprecated 4-d blob shapes.
LEGACY_RANKS = {("Convolution", 0): 4, ("Deconvolution", 0): 4, ("InnerProduct", 0): 2,
                ("Convolution", 1): 1, ("Deconvolution", 1): 1, ("InnerProduct", 1): 1}


class CaffeModelError(ValueError):
    """A file that is not a readable ``.caffemodel``; the one-line message names the file and the byte
    offset of the problem."""


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer of a Caffe net: its name, its type (``LayerParameter`` spelling, e.g. ``"InnerProduct"``,
    also for V1 / V0 files) and its parameter blobs (float32, in their Caffe shapes)."""

    name: str
    type: str
    blobs: tuple[np.ndarray, ...]


@dataclasses.dataclass(frozen=True)
class Net:
    """A decoded ``NetParameter``: ``name``, every ``layers`` in file order, and ``version``: 2 for
    ``layer`` (LayerParameter), 1 for ``layers`` (V1LayerParameter), 0 if those wrap V0LayerParameters."""

    name: str
    layers: tuple[Layer, ...]
    version: int

    def blobs(self) -> dict[str, list[np.ndarray]]:
        """``{layer name: [blob, ...]}`` of the layers that have blobs, in file order."""
        return {layer.name: list(layer.blobs) for layer in self.layers if layer.blobs}


class _Decoder:
    """Wire-format reading over ``buf`` (bytes-like; positions are absolute byte offsets)."""

    def __init__(self, buf: Any, path: str) -> None:
        self.buf, self.path, self.size = buf, path, len(buf)

    # ------------------------------------------------------------------------------------- errors
    def error(self, offset: int, what: str) -> CaffeModelError:
        hint = ""
        head = bytes(self.buf[:256])
        if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
            hint = " (the file is text: a .prototxt network definition? the weights are the binary .caffemodel)"
        return CaffeModelError(f"{self.path}: not a valid .caffemodel (binary caffe.NetParameter): {what} "
                               f"at byte {offset}{hint}")

    def overrun(self, start: int, need: int, end: int, what: str) -> CaffeModelError:
        if end == self.size:
            return CaffeModelError(f"{self.path}: truncated .caffemodel: {what} at byte {start} needs "
                                   f"{'at least ' if what == 'a varint' else ''}{need} byte{'s' * (need != 1)}, but "
                                   f"the file ends at byte {self.size}")
        return self.error(start, f"{what} of {need} bytes runs past the end of its message (byte {end})")

    # ----------------------------------------------------------------------------------- primitives
    def varint(self, pos: int, end: int) -> tuple[int, int]:
        buf, start, result, shift = self.buf, pos, 0, 0
        while True:
            if pos >= end:
                raise self.overrun(start, pos - start + 1, end, "a varint")
            byte = buf[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, pos
            shift += 7
            if shift >= 70:
                raise self.error(start, "a varint longer than 10 bytes")

    def fields(self, start: int, end: int, names: dict[int, str] | None = None) -> Iterator[tuple[int, int, Any, int]]:
        """(field number, wire type, value, offset of the tag) of each field in ``[start, end)``; the value
        is an int for varints, a (start, end) span otherwise. ``names`` name fields in error messages."""
        pos = start
        while pos < end:
            at = pos
            key, pos = self.varint(pos, end)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise self.error(at, f"field number 0 (tag byte 0x{key:02x})")
            if wire == VARINT:
                value, pos = self.varint(pos, end)
            elif wire in (I64, I32, LEN):
                if wire == LEN:
                    need, pos = self.varint(pos, end)
                else:
                    need = 8 if wire == I64 else 4
                if pos + need > end:
                    what = (names or {}).get(field, f"field {field}")
                    raise self.overrun(at, pos - at + need, end, f"{what} ({WIRE_NAMES[wire]})")
                value, pos = (pos, pos + need), pos + need
            elif wire in (SGROUP, EGROUP):
                raise self.error(at, f"field {field} has {WIRE_NAMES[wire]} wire type, which caffe.proto never uses")
            else:
                raise self.error(at, f"invalid wire type {wire} (field {field})")
            yield field, wire, value, at

    def expect(self, field: int, wire: int, expected: int, at: int, what: str) -> None:
        if wire != expected:
            raise self.error(at, f"{what} (field {field}) has {WIRE_NAMES.get(wire, wire)} wire type, expected "
                                 f"{WIRE_NAMES[expected]}")

    def string(self, span: tuple[int, int], at: int) -> str:
        try:
            return bytes(self.buf[span[0]:span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(at, "a string field that is not UTF-8") from None

    def packed_varints(self, span: tuple[int, int]) -> list[int]:
        values, pos = [], span[0]
        while pos < span[1]:
            value, pos = self.varint(pos, span[1])
            values.append(value)
        return values

    # -------------------------------------------------------------------------------------- messages
    def net(self) -> Net:
        name, layers, versions, kinds = "", [], set(), set()
        names = {NET_NAME: "NetParameter.name", NET_LAYER: "NetParameter.layer", NET_LAYERS_V1: "NetParameter.layers"}
        for field, wire, value, at in self.fields(0, self.size, names):
            if field == NET_NAME:
                self.expect(field, wire, LEN, at, "NetParameter.name")
                name = self.string(value, at)
            elif field in (NET_LAYER, NET_LAYERS_V1):
                what = "NetParameter.layer" if field == NET_LAYER else "NetParameter.layers"
                self.expect(field, wire, LEN, at, what)
                layer, version = self.layer(value) if field == NET_LAYER else self.v1_layer(value)
                layers.append(layer)
                versions.add(version)
                kinds.add(field)
        if not kinds:
            raise self.error(0, f"no layer (field {NET_LAYER}) or layers (field {NET_LAYERS_V1}) in "
                                f"{self.size} bytes")
        if len(kinds) > 1:
            raise self.error(0, "both layer (LayerParameter) and layers (V1LayerParameter) fields; Caffe refuses "
                                "such nets too")
        seen: set[str] = set()
        for layer in layers:
            if layer.blobs and layer.name in seen:
                raise self.error(0, f"two layers named {layer.name!r} with blobs")
            seen.add(layer.name)
        return Net(name, tuple(layers), min(versions))

    def layer(self, span: tuple[int, int]) -> tuple[Layer, int]:
        name, kind, blobs = "", "", []
        for field, wire, value, at in self.fields(*span, {LAYER_BLOBS: "LayerParameter.blobs"}):
            if field == LAYER_NAME:
                self.expect(field, wire, LEN, at, "LayerParameter.name")
                name = self.string(value, at)
            elif field == LAYER_TYPE:
                self.expect(field, wire, LEN, at, "LayerParameter.type")
                kind = self.string(value, at)
            elif field == LAYER_BLOBS:
                self.expect(field, wire, LEN, at, "LayerParameter.blobs")
                blobs.append((value, at))
        return self.finish(name, kind, blobs), 2

    def v1_layer(self, span: tuple[int, int]) -> tuple[Layer, int]:
        name, kind, blobs, v0 = "", "", [], None
        for field, wire, value, at in self.fields(*span, {V1_BLOBS: "V1LayerParameter.blobs"}):
            if field == V1_NAME:
                self.expect(field, wire, LEN, at, "V1LayerParameter.name")
                name = self.string(value, at)
            elif field == V1_TYPE:
                self.expect(field, wire, VARINT, at, "V1LayerParameter.type")
                kind = V1_TYPES.get(value, f"V1LayerParameter type {value}")
            elif field == V1_BLOBS:
                self.expect(field, wire, LEN, at, "V1LayerParameter.blobs")
                blobs.append((value, at))
            elif field == V1_V0LAYER:
                self.expect(field, wire, LEN, at, "V1LayerParameter.layer")
                v0 = value
        if v0 is None:
            return self.finish(name, kind, blobs), 1
        v0_name, v0_kind, v0_blobs = name, kind, list(blobs)  # Caffe's upgrade takes the V0 layer's own fields
        for field, wire, value, at in self.fields(*v0):
            if field == V0_NAME:
                self.expect(field, wire, LEN, at, "V0LayerParameter.name")
                v0_name = self.string(value, at)
            elif field == V0_TYPE:
                self.expect(field, wire, LEN, at, "V0LayerParameter.type")
                v0_kind = self.string(value, at)
                v0_kind = V0_TYPES.get(v0_kind, v0_kind)
            elif field == V0_BLOBS:
                self.expect(field, wire, LEN, at, "V0LayerParameter.blobs")
                v0_blobs.append((value, at))
        return self.finish(v0_name, v0_kind, v0_blobs), 0

    def finish(self, name: str, kind: str, blobs: list[tuple[tuple[int, int], int]]) -> Layer:
        return Layer(name, kind, tuple(self.blob(span, at, name, kind, i) for i, (span, at) in enumerate(blobs)))

    def blob(self, span: tuple[int, int], at: int, layer: str, kind: str, index: int) -> np.ndarray:
        legacy: dict[int, int] = {}
        shape: list[int] | None = None
        floats: list[tuple[int, int]] = []
        doubles: list[tuple[int, int]] = []
        what = f"blob {index} of layer {layer!r}"
        names = {BLOB_DATA: f"{what}: data", BLOB_DOUBLE_DATA: f"{what}: double_data"}
        for field, wire, value, tag in self.fields(*span, names):
            if field in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH):
                self.expect(field, wire, VARINT, tag, f"{what}: a 4-d shape field")
                legacy[field] = value - (1 << 64) if value >= 1 << 63 else value  # int32 / int64 two's complement
            elif field == BLOB_SHAPE:
                self.expect(field, wire, LEN, tag, f"{what}: BlobProto.shape")
                shape = []
                for f, w, v, t in self.fields(*value):
                    if f == SHAPE_DIM:
                        if w == LEN:  # packed
                            shape += self.packed_varints(v)
                        else:
                            self.expect(f, w, VARINT, t, f"{what}: BlobShape.dim")
                            shape.append(v)
                shape = [d - (1 << 64) if d >= 1 << 63 else d for d in shape]
            elif field in (BLOB_DATA, BLOB_DOUBLE_DATA):
                item, chunks = (4, floats) if field == BLOB_DATA else (8, doubles)
                if wire != LEN:  # unpacked repeated values are legal protobuf, if unusual
                    self.expect(field, wire, I32 if item == 4 else I64, tag, f"{what}: BlobProto data")
                elif (value[1] - value[0]) % item:
                    raise self.error(tag, f"{what}: packed data of {value[1] - value[0]} bytes is not a whole "
                                          f"number of {item}-byte values")
                chunks.append(value)
        if legacy:
            dims = tuple(legacy.get(f, 0) for f in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH))
            final = _legacy_shape(dims, LEGACY_RANKS.get((kind, index)))
        elif shape is not None:
            dims = final = tuple(shape)
        else:
            dims = final = None
        if any(d < 0 for d in dims or ()):
            raise self.error(at, f"{what}: negative dimension in shape {dims}")
        values = _read(self.buf, doubles, "<f8") if doubles else _read(self.buf, floats, "<f4")
        if final is None:  # no shape at all: Caffe would refuse; keep the values as a vector
            final = (values.size,)
        if values.size != int(np.prod(final, dtype=np.int64)):
            raise self.error(at, f"{what}: {values.size} values for shape {dims}")
        return values.reshape(final)


def _read(buf: Any, spans: list[tuple[int, int]], dtype: str) -> np.ndarray:
    """The little-endian values of ``spans`` of ``buf`` as one float32 array that owns its memory."""
    if len(spans) == 1:
        (start, end), = spans
        return np.frombuffer(buf, dtype, (end - start) // np.dtype(dtype).itemsize, start).astype(np.float32)
    parts = [np.frombuffer(buf, dtype, (end - start) // np.dtype(dtype).itemsize, start) for start, end in spans]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _legacy_shape(dims: tuple[int, ...], rank: int | None) -> tuple[int, ...]:
    """A deprecated (num, channels, height, width) shape at the rank its layer gives it (Caffe aligns these at
    their end); unknown layer kinds lose their leading 1s."""
    if rank is None:
        rank = len(dims)
        while rank > 1 and dims[len(dims) - rank] == 1:
            rank -= 1
    lead = dims[:len(dims) - rank]
    return tuple(dims[len(dims) - rank:]) if all(d == 1 for d in lead) else tuple(dims)


def decode_net(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> Net:
    """Decodes a ``NetParameter`` held in memory; ``name`` is used in error messages."""
    return _Decoder(data, name).net()


def read_net(path: str | os.PathLike) -> Net:
    """Decodes the ``.caffemodel`` at ``path`` (memory-mapped, read once). Raises :class:`CaffeModelError`
    (a ValueError) naming the file and the byte offset if it is not one, or truncated; OSError if unreadable."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise CaffeModelError(f"{path}: not a valid .caffemodel (binary caffe.NetParameter): empty file at byte 0")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _Decoder(buf, path).net()
    finally:
        try:
            buf.close()
        except BufferError:  # a view into the map kept alive by an exception's frames; closed when collected
            pass


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """``{layer name: [blob, ...]}`` for every layer of the ``.caffemodel`` at ``path`` that has blobs, in
    file order; blobs are float32 arrays in their Caffe shapes (weights (out, in, kh, kw) for Convolution,
    (in, out, kh, kw) for Deconvolution, (out, in) for InnerProduct; biases (out,)). Errors as :func:`read_net`."""
    return read_net(path).blobs()


__all__ = ["CaffeModelError", "Layer", "Net", "decode_net", "read_caffemodel", "read_net"]
