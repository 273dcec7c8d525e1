"""fcn_jax.io: a file written there is complete or absent; a failure leaves no temporary file and an earlier
file unchanged."""
import errno
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


def test_atomic_group_is_all_or_nothing(tmp_path, monkeypatch):
    """A group's files appear together: a failure while writing leaves the targets as they were; a failure
    once renaming has begun (or in the record that follows) removes the whole group, old files included."""
    paths = [tmp_path / "a.png", tmp_path / "sub" / "a_overlay.png"]
    paths[0].write_bytes(b"old a")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_group(paths) as temps:
            for tmp in temps:
                with open(tmp, "wb") as f:
                    f.write(b"new")
            raise KeyboardInterrupt
    assert paths[0].read_bytes() == b"old a" and os.listdir(tmp_path / "sub") == []
    assert sorted(os.listdir(tmp_path)) == ["a.png", "sub"]

    recorded = []
    with io.atomic_group(paths, record=lambda: recorded.append([p.read_bytes() for p in paths])) as temps:
        for tmp, data in zip(temps, (b"A", b"B")):
            with open(tmp, "wb") as f:
                f.write(data)
    assert recorded == [[b"A", b"B"]]  # called once every file is in place

    replace, calls = os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(OSError):
        with io.atomic_group(paths) as temps:
            for tmp in temps:
                with open(tmp, "wb") as f:
                    f.write(b"newer")
    monkeypatch.undo()
    assert not paths[0].exists() and not paths[1].exists()  # never half new, half old
    assert os.listdir(tmp_path) == ["sub"] and os.listdir(tmp_path / "sub") == []

    def no_record():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with io.atomic_group(paths, record=no_record) as temps:
            for tmp in temps:
                open(tmp, "wb").close()
    assert os.listdir(tmp_path) == ["sub"] and os.listdir(tmp_path / "sub") == []


def test_append_json_line_undoes_a_failed_write_and_cuts_a_torn_line(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    io.append_json_line(path, {"a": 1})
    pwrite = os.pwrite

    def half(fd, data, offset):
        pwrite(fd, data[: len(data) // 2], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", half)
    with pytest.raises(OSError):
        io.append_json_line(path, {"b": 2})
    monkeypatch.undo()
    assert path.read_bytes() == b'{"a": 1}\n'
    with open(path, "ab") as f:
        f.write(b'{"killed": ')  # a process killed half way through a line
    assert io.read_json_lines(path) == [{"a": 1}]
    io.append_json_line(path, {"c": 3})
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
    assert io.read_json_lines(path) == [{"a": 1}, {"c": 3}]


def test_manifest_records_complete_groups(tmp_path):
    out = tmp_path / "out"
    manifest = io.Manifest(out, ".record.jsonl")
    assert not manifest.exists and manifest.differences({"x": 1}) == [] and not out.exists()  # nothing written
    out.mkdir()
    manifest.begin({"ckpt": "/m", "scales": (0.5, 1.0)})
    (out / "sub").mkdir()
    for name, data in (("a.png", b"12345"), ("sub/a.npy", b"123")):
        (out / name).write_bytes(data)
    manifest.add("/in/a.png", [out / "a.png", out / "sub" / "a.npy"], stem="a")
    again = io.Manifest(out, ".record.jsonl")
    assert again.settings == {"ckpt": "/m", "scales": [0.5, 1.0]}
    assert again.differences({"ckpt": "/m", "scales": [0.5, 1.0]}) == []
    assert again.differences({"ckpt": "/n", "scales": (0.5, 1.0)}) == ['ckpt: "/m" -> "/n"']
    assert again.complete("/in/a.png") == {"stem": "a", "key": "/in/a.png", "files": {"a.png": 5, "sub/a.npy": 3}}
    assert again.complete("/in/b.png") is None
    (out / "sub" / "a.npy").write_bytes(b"1")  # changed since: not complete
    assert again.complete("/in/a.png") is None
    os.remove(out / "a.png")
    assert again.complete("/in/a.png") is None
    again.remove()
    assert sorted(os.listdir(out)) == ["sub"] and not io.Manifest(out, ".record.jsonl").exists


def test_is_full_disk():
    assert io.is_full_disk(OSError(errno.ENOSPC, "No space left on device"))
    assert io.is_full_disk(OSError(errno.EFBIG, "File too large"))  # RLIMIT_FSIZE
    assert io.is_full_disk(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not io.is_full_disk(PermissionError(errno.EACCES, "Permission denied")) and not io.is_full_disk(ValueError())
    assert io.error_text(OSError(errno.ENOSPC, "No space left on device", "/x/y.png")) == "No space left on device"


def test_a_full_disk_anywhere_in_a_tool_is_one_line_and_exit_1(capsys):
    """Any tool (convert, score, ...) that meets a full disk, a quota or a file size limit says so in one
    line with exit code 1; other OS errors are bugs and keep their traceback."""
    import errno

    from fcn_jax.cli import user_errors

    @user_errors("tool.py")
    def main(code):
        raise OSError(code, os.strerror(code), "/out/model/params")

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        assert main(code) == 1
        assert capsys.readouterr().err.splitlines() == [f"tool.py: error: /out/model/params: {os.strerror(code)}"]
    with pytest.raises(PermissionError):
        main(errno.EACCES)
