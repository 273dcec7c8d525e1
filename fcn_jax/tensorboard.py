"""TensorBoard event files written directly: no TensorFlow, torch or tensorboardX needed to write them.

An event file (``events.out.tfevents.<time>.<host>.<pid>``) is a sequence of TFRecords: the record's
length (uint64, little-endian), the masked CRC-32C of those 8 bytes, the record, the masked CRC-32C of
the record. Each record is an ``Event`` protobuf (tensorflow/core/util/event.proto: ``wall_time`` 1,
``step`` 2, ``file_version`` 3, ``summary`` 5) whose ``Summary`` (summary.proto) holds values with a
``tag`` (1) and either a ``simple_value`` (2, a scalar) or an ``image`` (4: height 1, width 2,
colorspace 3, PNG bytes 4). That is all TensorBoard needs for its Scalars and Images tabs.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import time

import numpy as np

FILE_VERSION = b"brain.Event:2"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (modulo 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """One TFRecord frame around ``data``."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64s as 10-byte two's complement, as protobuf does
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire_type) + payload


def _int_field(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def _bytes_field(number: int, value: bytes) -> bytes:
    return _field(number, 2, _varint(len(value)) + value)


def event(step: int, values: list[bytes] = (), wall_time: float | None = None,
          file_version: bytes | None = None) -> bytes:
    """An ``Event`` message: ``values`` are encoded ``Summary.Value``s (see :func:`scalar_value`)."""
    out = _field(1, 1, struct.pack("<d", time.time() if wall_time is None else wall_time))
    out += _int_field(2, int(step))
    if file_version is not None:
        out += _bytes_field(3, file_version)
    if values:
        out += _bytes_field(5, b"".join(_bytes_field(1, v) for v in values))
    return out


def scalar_value(tag: str, value: float) -> bytes:
    """A ``Summary.Value`` holding the scalar ``value`` (stored as float32, as TensorBoard's scalars are)."""
    return _bytes_field(1, tag.encode()) + _field(2, 5, struct.pack("<f", value))


def image_value(tag: str, image: np.ndarray) -> bytes:
    """A ``Summary.Value`` holding an (H, W, 3) uint8 RGB picture, PNG-encoded."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image {tag!r}: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    height, width = image.shape[:2]
    encoded = _int_field(1, height) + _int_field(2, width) + _int_field(3, 3) + _bytes_field(4, png.getvalue())
    return _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)


class EventFileWriter:
    """Appends events to a new event file in ``logdir``; every :meth:`write` reaches the file before it returns."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self.write(event(0, file_version=FILE_VERSION))

    def write(self, data: bytes) -> None:
        """Writes one encoded ``Event`` (see :func:`event`)."""
        self._file.write(tfrecord(data))
        self._file.flush()

    def scalars(self, step: int, scalars: dict[str, float]) -> None:
        self.write(event(step, [scalar_value(tag, value) for tag, value in scalars.items()]))

    def images(self, step: int, images: dict[str, np.ndarray]) -> None:
        self.write(event(step, [image_value(tag, image) for tag, image in images.items()]))

    def close(self) -> None:
        self._file.close()
