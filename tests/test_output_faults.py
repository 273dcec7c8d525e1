"""Outputs under faults: SIGTERM mid-file, SIGINT between files (sent by a thread while a write is slow) and a
full disk (a small tmpfs where the test can mount one, else RLIMIT_FSIZE) for predict.py, eval.py
--save-predictions and the dataset export. Only complete files are left, the one-line messages count them
truthfully, and the same command run again continues, giving the files an uninterrupted run gives."""
import errno
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from fcn_jax import checkpoint, create_model
from fcn_jax.config import ModelConfig
from fcn_jax.data import SHAPES_CLASSES, load_split
from test_evaluate import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "shapes/tiny"
PAGE = 4096
SIZES = {"a0": (24, 20), "a1": (24, 20), "b0": (96, 88), "b1": (96, 88), "b2": (96, 88)}  # two small, then big


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    load_split(DATASET, "train", data_dir=path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir):
    """A width-1/16 fcn32s with random weights (no training) recording shapes/tiny as its dataset."""
    config = ModelConfig(variant="fcn32s", num_classes=len(SHAPES_CLASSES), width=1 / 16)
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    meta = checkpoint.model_meta(config, SHAPES_CLASSES, "caffe",
                                 config={"dataset": DATASET, "data_dir": data_dir, "eval_bucket_multiple": 128})
    checkpoint.save_model(path, random_variables(create_model("fcn32s", len(SHAPES_CLASSES), width=1 / 16)), meta,
                          step=1)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    path = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"{name}.png")
    return path


def tree(root):
    """{relative path: bytes} of every file under ``root`` (hidden ones included)."""
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, names in os.walk(root) for f in names}


@pytest.fixture(scope="module")
def predicted(model_dir, photos, tmp_path_factory):
    """{file: bytes} of an uninterrupted ``predict.py --probs`` run over the photos (the manifest left out)."""
    from fcn_jax.cli.predict import main
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out), "--probs"]) == 0
    files = tree(out)
    files.pop(".fcn-predict.jsonl")
    assert set(files) == {f"{s}{x}" for s in SIZES for x in (".png", "_overlay.png", "_probs.npy")}
    return files


def same(name, data, expected):
    """Whether file ``name`` holds what the uninterrupted run wrote: the same bytes; probabilities computed in
    another process may differ in the last float16 bit."""
    if name.endswith(".npy") and data != expected:
        a, b = np.load(io.BytesIO(data)), np.load(io.BytesIO(expected))
        return a.dtype == b.dtype and a.shape == b.shape and np.allclose(a, b, atol=2e-3, rtol=0)
    return data == expected


def group_of(name):
    return name.split("_")[0].split(".")[0]


def check_complete(out, reference, done):
    """``out`` holds exactly the groups ``done`` (each file equal to the uninterrupted run's), recorded in its
    manifest with their sizes, and nothing else: no temporary, partial or empty file."""
    files = tree(out)
    manifest = [json.loads(line) for line in files.pop(".fcn-predict.jsonl").decode().splitlines()]
    assert sorted(files) == sorted(f for f in reference if group_of(f) in done), sorted(files)
    for name, data in files.items():
        assert same(name, data, reference[name]), name
    assert sorted(e["stem"] for e in manifest[1:]) == sorted(done)
    assert {f: s for e in manifest[1:] for f, s in e["files"].items()} == {f: len(d) for f, d in files.items()}


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt here, whatever the test runner installed."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def cut_short(monkeypatch, match, at, fault):
    """Patches ``Image.Image.save`` so that the ``at``-th save to a file whose name contains ``match`` writes
    half its bytes and then calls ``fault()`` (a signal to this process, or an OSError)."""
    save, calls = Image.Image.save, []

    def patched(self, fp, format=None, **params):
        if isinstance(fp, (str, os.PathLike)) and match in os.path.basename(fp):
            calls.append(fp)
            if len(calls) == at:
                buffer = io.BytesIO()
                save(self, buffer, format=format or "PNG", **params)
                with open(fp, "wb") as f:
                    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                fault()
        return save(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", patched)
    return calls


def test_predict_sigterm_mid_file_leaves_complete_groups_and_continues(model_dir, photos, predicted, tmp_path,
                                                                       monkeypatch, capsys):
    """SIGTERM half way through the third image's overlay: the two complete images stay, nothing of the third;
    the message counts them; the same command continues, skipping them, and ends as an uninterrupted run."""
    from fcn_jax.cli.predict import main
    out = tmp_path / "out"
    argv = ["--ckpt", model_dir, str(photos), "--out", str(out), "--probs"]
    cut_short(monkeypatch, "_overlay", 3, lambda: signal.raise_signal(signal.SIGTERM))
    assert main(argv) == 143
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"predict.py: error: interrupted by SIGTERM; 2 of 5 images' results are "
                                         f"complete in {out}; run the same command again to continue"]
    assert len(captured.out.splitlines()) == 2
    check_complete(out, predicted, {"a0", "a1"})
    kept = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out) if not name.startswith(".")}
    monkeypatch.undo()
    assert main(argv) == 0  # no --overwrite needed
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{out}: 2 of 5 images' results are complete already (skipped); segmenting the other 3"
    assert len(lines) == 4
    check_complete(out, predicted, set(SIZES))
    assert all((out / name).stat().st_mtime_ns == t for name, t in kept.items())  # not rewritten


def test_predict_sigint_between_files_from_a_thread(model_dir, photos, predicted, tmp_path, monkeypatch, capsys,
                                                    sigint_raises):
    """Ctrl-C (a thread's SIGINT) while the second image's probabilities are slow to start, its label PNG and
    overlay written: no label without its overlay and probabilities is left."""
    from fcn_jax.cli.predict import main
    out = tmp_path / "out"
    save, calls = np.save, []

    def slow(file, array, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:
            threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGINT)).start()
            threading.Event().wait(30)  # interrupted by the signal
            raise AssertionError("no SIGINT arrived")
        return save(file, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", slow)
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out), "--probs"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"predict.py: error: interrupted by SIGINT; 1 of 5 images' results are complete in {out}; run the same "
        f"command again to continue"]
    check_complete(out, predicted, {"a0"})


def test_predict_interrupted_before_any_result_leaves_nothing(model_dir, photos, tmp_path, monkeypatch, capsys):
    from fcn_jax.cli.predict import main
    out = tmp_path / "new" / "out"
    cut_short(monkeypatch, "a0", 1, lambda: signal.raise_signal(signal.SIGTERM))
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out)]) == 143
    assert capsys.readouterr().err.splitlines() == [
        "predict.py: error: interrupted by SIGTERM; no results were written"]
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ a full disk

def can_mount_tmpfs(tmp_path):
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$0"', str(tmp_path)],
                           capture_output=True)
    return probe.returncode == 0


def small_disk_run(argv, disk, size, mode):
    """Runs ``argv`` with the directory ``disk`` limited to ``size`` bytes: a tmpfs of that size mounted on it
    in a mount namespace of the run's own ('tmpfs'; its files are copied to ``disk``.copy at the end), or
    every file limited to ``size`` bytes ('rlimit', SIGXFSZ ignored so that writes fail with EFBIG). Returns
    (completed process, the directory holding what the run wrote)."""
    disk.mkdir()
    if mode == "tmpfs":
        copy = disk.parent / f"{disk.name}.copy"
        copy.mkdir()
        script = ('mount -t tmpfs -o size="$SIZE" tmpfs "$DISK" || exit 97; "$@"; rc=$?; '
                  'cp -a "$DISK/." "$COPY/"; exit $rc')
        env = dict(os.environ, SIZE=str(size), DISK=str(disk), COPY=str(copy))
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", *argv], capture_output=True, text=True,
                              timeout=300, cwd=ROOT, env=env)
        assert proc.returncode != 97, proc.stderr
        return proc, copy

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    env = dict(os.environ, FCN_JAX_COMPILATION_CACHE="off")  # a cache file would exceed the limit
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, preexec_fn=limit, env=env)
    return proc, disk


def pages(sizes):
    return sum(-(-s // PAGE) for s in sizes)


@pytest.fixture(scope="module")
def disk_mode(tmp_path_factory):
    return "tmpfs" if can_mount_tmpfs(tmp_path_factory.mktemp("probe")) else "rlimit"


def test_predict_full_disk_stops_at_the_first_failure(model_dir, photos, predicted, tmp_path, disk_mode, capsys):
    """The disk holds the two small images' results and not the third's: one line naming --out and the two,
    exit code 1, no empty or partial file; after freeing space the same command continues."""
    small = [len(d) for f, d in predicted.items() if group_of(f) in ("a0", "a1")]
    big = [len(d) for f, d in predicted.items() if group_of(f) == "b0"]
    if disk_mode == "tmpfs":  # both small groups and the manifest fit, the first big group does not
        size = PAGE * (pages(small) + 3)
        assert pages(big) > 3
    else:  # each small file fits, the big probabilities do not
        size = max(small) + 1
        assert max(big) > size
    disk = tmp_path / "disk"
    out = disk / "out"
    argv = [sys.executable, os.path.join(ROOT, "predict.py"), "--ckpt", model_dir, str(photos), "--out", str(out),
            "--probs"]
    proc, written = small_disk_run(argv, disk, size, disk_mode)
    reason = os.strerror(errno.ENOSPC if disk_mode == "tmpfs" else errno.EFBIG)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"predict.py: error: --out {out}: {reason}; 2 of 5 images' results are "
                                        f"complete there; free space and run the same command again to continue"]
    check_complete(written / "out", predicted, {"a0", "a1"})
    from fcn_jax.cli.predict import main
    argv[argv.index(str(out))] = str(written / "out")
    assert main(argv[2:]) == 0  # room again: the same command continues
    assert "2 of 5 images' results are complete already (skipped)" in capsys.readouterr().out
    check_complete(written / "out", predicted, set(SIZES))


def test_export_full_disk_keeps_complete_examples_and_continues(data_dir, tmp_path, disk_mode, capsys):
    from fcn_jax.cli.dataset import main
    from fcn_jax.data.to_folder import export_folder
    export_folder(DATASET, tmp_path / "reference", data_dir=data_dir, limit=4, progress=False)
    reference = tree(tmp_path / "reference")
    sizes = {name: len(data) for name, data in reference.items()}
    if disk_mode == "tmpfs":  # classes.txt, the record and about two and a half examples
        size = PAGE * (2 + pages(s for n, s in sizes.items() if n.startswith(("images/train", "masks/train")))
                       * 5 // 8)
    else:
        size = sorted(sizes.values())[len(sizes) // 2]
    disk = tmp_path / "disk"
    out = disk / "folder"
    argv = [sys.executable, "-m", "fcn_jax.dataset", "export", DATASET, str(out), "--data-dir", data_dir,
            "--limit", "4", "--no-progress"]
    proc, written = small_disk_run(argv, disk, size, disk_mode)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m fcn_jax.dataset export: error: {out}: cannot write ("), err
    partial = written / "folder.partial"
    if "nothing was written" in err[0]:
        assert os.listdir(written) == []
        done = 0
    else:
        files = tree(partial)
        record = [json.loads(line) for line in files.pop(".fcn-export.jsonl").decode().splitlines()]
        done = len(record) - 1
        assert f"; {done} of 8 examples are complete in {disk / 'folder.partial'}; free space and run the same " \
            "command again to continue" in err[0]
        assert files.pop("classes.txt") == reference["classes.txt"]
        assert sorted(files) == sorted(f for e in record[1:] for f in e["files"]) and len(files) == 2 * done
        assert all(data == reference[name] for name, data in files.items())  # each file whole
    if disk_mode == "tmpfs":
        assert 0 < done < 8
    assert main(["export", DATASET, str(written / "folder"), "--data-dir", data_dir, "--limit", "4",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    if done:
        assert lines[0] == (f"continuing the unfinished export in {partial}: {done} of 8 examples are complete "
                            f"already (skipped)")
    assert tree(written / "folder") == reference and sorted(os.listdir(written)) == ["folder"]


# ------------------------------------------------------------------------------------------------ eval.py

@pytest.fixture(scope="module")
def evaluated(model_dir, data_dir, tmp_path_factory):
    """(argv without --save-predictions, {file: bytes} of an uninterrupted eval.py --save-predictions run)."""
    from fcn_jax.cli.eval import main
    root = tmp_path_factory.mktemp("eval_reference")
    argv = ["--ckpt", model_dir, "--data-dir", data_dir, "--batch-size", "2", "--num-pictures", "4",
            "--no-progress", "--json", str(root / "eval.json")]
    assert main(argv + ["--save-predictions", str(root / "pictures")]) == 0
    files = tree(root / "pictures")
    files.pop(".fcn-eval.jsonl")
    assert len(files) == 8 and sum(f.endswith("_panel.png") for f in files) == 4
    return argv, files


def check_pictures(pictures, reference, count):
    files = tree(pictures)
    record = [json.loads(line) for line in files.pop(".fcn-eval.jsonl").decode().splitlines()]
    assert len(record) == 1 + count and len(files) == 2 * count
    assert {f: s for e in record[1:] for f, s in e["files"].items()} == {f: len(d) for f, d in files.items()}
    assert all(data == reference[name] for name, data in files.items())


def test_eval_sigterm_mid_file_counts_truthfully_and_continues(evaluated, tmp_path, monkeypatch, capsys):
    from fcn_jax.cli.eval import main
    argv, reference = evaluated
    pictures = tmp_path / "pictures"
    argv = [*argv[:-1], str(tmp_path / "eval.json"), "--save-predictions", str(pictures)]
    cut_short(monkeypatch, "_panel", 3, lambda: signal.raise_signal(signal.SIGTERM))
    assert main(argv) == 143
    assert capsys.readouterr().err.splitlines() == [
        f"eval.py: error: interrupted by SIGTERM; 2 of 4 predictions are complete in {pictures}, no results file "
        f"was written; run the same command again to continue"]
    check_pictures(pictures, reference, 2)
    assert not (tmp_path / "eval.json").exists()
    monkeypatch.undo()
    assert main(argv + ["--flip"]) == 2  # other settings: refused, naming what differs
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"--save-predictions {pictures} holds predictions made with other settings (flip: " \
        "false -> true); pass --overwrite" in err[0], err
    assert main(argv) == 0
    assert f"predictions written to {pictures}: 4 images (2 complete already, skipped)" in capsys.readouterr().out
    check_pictures(pictures, reference, 4)
    assert json.loads((tmp_path / "eval.json").read_text())["num_images"] == 16


def test_eval_full_disk_is_one_line_and_leaves_no_partial_file(evaluated, tmp_path, monkeypatch, capsys):
    from fcn_jax.cli.eval import main
    argv, reference = evaluated
    pictures = tmp_path / "pictures"

    def full():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cut_short(monkeypatch, "_panel", 2, full)
    assert main([*argv, "--save-predictions", str(pictures)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"eval.py: error: --save-predictions {pictures}: No space left on device; 1 of 4 predictions are complete "
        f"there; free space and run the same command again to continue"]
    check_pictures(pictures, reference, 1)


def test_learning_curves_interrupted_while_drawing_leave_the_earlier_picture(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fcn_jax.viz import plot_learning_curves
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train/loss": 1 / s}) + "\n"
                                                    for s in (1, 2, 3)))
    out = tmp_path / "learning_curves.png"
    out.write_bytes(b"the earlier picture")
    savefig = Figure.savefig

    def half(self, fname, **kwargs):
        buffer = io.BytesIO()
        savefig(self, buffer, **kwargs)
        data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as f:
                f.write(data)
        else:
            fname.write(data)
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", half)
    with pytest.raises(KeyboardInterrupt):
        plot_learning_curves(str(tmp_path), str(out))
    assert out.read_bytes() == b"the earlier picture"
    assert sorted(os.listdir(tmp_path)) == ["learning_curves.png", "metrics.jsonl"]
    monkeypatch.undo()
    plot_learning_curves(str(tmp_path), str(out))
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.width > picture.height > 100
