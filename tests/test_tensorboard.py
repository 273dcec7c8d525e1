"""TensorBoard event files: framing and protobufs checked with tensorboardX's own parser and published CRC values."""
import io
import struct

import numpy as np
import pytest

from fcn_jax import tensorboard
from fcn_jax.summary import SummaryWriter


def test_crc32c_known_answers():
    assert tensorboard.crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check value for CRC-32C
    assert tensorboard.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720, B.4: 32 bytes of zeros
    assert tensorboard.crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720, B.4: 0x00..0x1F


def read_records(path):
    """TFRecord frames of ``path``, each CRC checked with tensorboardX's CRC-32C implementation."""
    from tensorboardX.crc32c import crc32c

    def masked(data):
        crc = crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    blob, at, records = open(path, "rb").read(), 0, []
    while at < len(blob):
        header = blob[at:at + 8]
        (length,), (header_crc,) = struct.unpack("<Q", header), struct.unpack("<I", blob[at + 8:at + 12])
        assert header_crc == masked(header)
        data = blob[at + 12:at + 12 + length]
        assert struct.unpack("<I", blob[at + 12 + length:at + 16 + length])[0] == masked(data)
        records.append(data)
        at += 16 + length
    return records


def test_a_run_log_reads_back_with_tensorboards_protobufs(tmp_path):
    pytest.importorskip("tensorboardX")
    from PIL import Image
    from tensorboardX.proto.event_pb2 import Event

    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (13, 21, 3), dtype=np.uint8)
    writer = SummaryWriter(str(tmp_path))
    writer.write(7, {"train/loss": 0.25, "val/mean_iu": 51.625})
    writer.write(2 ** 40, {"train/loss": -1.5})  # int64 steps beyond 32 bits, negative values
    writer.write_images(7, {"val/panel/0": picture})
    writer.close()

    (path,) = (tmp_path / "tensorboard").iterdir()
    assert path.name.startswith("events.out.tfevents.")
    events = [Event.FromString(record) for record in read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value if v.HasField("simple_value")]
    assert scalars == [(7, "train/loss", 0.25), (7, "val/mean_iu", 51.625), (2 ** 40, "train/loss", -1.5)]
    (image_event,) = [e for e in events if any(v.HasField("image") for v in e.summary.value)]
    (value,) = image_event.summary.value
    assert (image_event.step, value.tag) == (7, "val/panel/0")
    assert (value.image.height, value.image.width, value.image.colorspace) == (13, 21, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string))), picture)
    assert all(abs(e.wall_time - events[0].wall_time) < 600 for e in events)


def test_images_must_be_rgb_uint8():
    with pytest.raises(ValueError, match="panel"):
        tensorboard.image_value("panel", np.zeros((4, 4), np.uint8))
