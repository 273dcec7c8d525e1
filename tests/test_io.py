"""fcn_jax.io: a file written there is complete or absent; a failure leaves no temporary file and an earlier
file unchanged."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from fcn_jax import io


def test_write_json_is_complete(tmp_path):
    path = tmp_path / "new" / "dir" / "record.json"  # parents are created
    record = {"name": "ümlaut", "values": list(range(20000)), "nested": {"nan": float("nan"), "none": None}}
    assert io.write_json(path, record) == os.fspath(path)
    text = path.read_text(encoding="utf8")
    assert text == json.dumps(record, indent=2) + "\n"
    assert json.loads(text)["values"] == record["values"]
    assert os.listdir(path.parent) == ["record.json"]  # no temporary file left


def test_write_bytes_and_text(tmp_path):
    data = bytes(range(256)) * 1000
    assert io.write_bytes(str(tmp_path / "b.bin"), data) == str(tmp_path / "b.bin")
    assert (tmp_path / "b.bin").read_bytes() == data
    io.write_text(tmp_path / "t.txt", "one\ntwo\n")
    assert (tmp_path / "t.txt").read_text() == "one\ntwo\n"
    io.write_text(tmp_path / "t.txt", "replaced")
    assert (tmp_path / "t.txt").read_text() == "replaced"
    assert sorted(os.listdir(tmp_path)) == ["b.bin", "t.txt"]


def test_unserialisable_json_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        io.write_json(tmp_path / "new.json", {"ok": 1, "bad": object()})
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old.json"
    old.write_text('{"kept": true}')
    with pytest.raises(TypeError):
        io.write_json(old, {"bad": {1, 2}})
    assert old.read_text() == '{"kept": true}'
    assert os.listdir(tmp_path) == ["old.json"]


def test_failure_while_writing_bytes_removes_the_temporary_file(tmp_path):
    old = tmp_path / "old.bin"
    old.write_bytes(b"before")
    with pytest.raises(TypeError):
        io.write_bytes(old, "not bytes")  # fails after the temporary file was opened
    assert old.read_bytes() == b"before"
    assert os.listdir(tmp_path) == ["old.bin"]


@pytest.mark.parametrize("error", [RuntimeError("half way"), KeyboardInterrupt()])
def test_atomic_path_failure_leaves_no_target_and_no_temporary_file(tmp_path, error):
    with pytest.raises(type(error)):
        with io.atomic_path(tmp_path / "out.txt") as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            raise error
    assert os.listdir(tmp_path) == []
    old = tmp_path / "old.txt"
    old.write_text("before")
    with pytest.raises(type(error)):
        with io.atomic_path(old) as tmp:
            with open(tmp, "w") as f:
                f.write("partial")
            assert old.read_text() == "before"  # untouched while the block runs
            raise error
    assert old.read_text() == "before"
    assert os.listdir(tmp_path) == ["old.txt"]


def test_atomic_path_serves_writers_that_choose_the_format_by_suffix(tmp_path):
    """PIL picks the format from the suffix and np.save appends '.npy' to a name without it: the temporary
    name keeps the target's suffix, so both write exactly what they would write to the target."""
    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
    with io.atomic_path(tmp_path / "picture.png") as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".png")
        assert os.path.basename(tmp).startswith(".")  # hidden: a listing of *.png never shows it
        image.save(tmp)
    image.save(tmp_path / "direct.png")
    assert (tmp_path / "picture.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    array = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    with io.atomic_path(tmp_path / "probs.npy") as tmp:
        np.save(tmp, array)
    np.testing.assert_array_equal(np.load(tmp_path / "probs.npy"), array)
    assert sorted(os.listdir(tmp_path)) == ["direct.png", "picture.png", "probs.npy"]


def test_a_directory_in_the_way_is_an_error_and_leaves_nothing(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(IsADirectoryError):
        io.write_json(tmp_path / "taken", {"a": 1})
    assert os.listdir(tmp_path) == ["taken"] and os.listdir(tmp_path / "taken") == []


def test_writes_through_a_symlink(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("{}")
    (tmp_path / "link.json").symlink_to(real)
    io.write_json(tmp_path / "link.json", [1])
    assert (tmp_path / "link.json").is_symlink() and json.loads(real.read_text()) == [1]
