"""predict.py on images of odd modes and sizes, a corrupt file, a missing one; image-mode conversions."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fcn_jax import checkpoint, create_model
from fcn_jax.config import ModelConfig
from fcn_jax.cli.predict import find_images
from fcn_jax.images import load_image, to_rgb
from test_evaluate import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("background", "disc", "square", "triangle")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = ModelConfig(variant="fcn32s", num_classes=len(CLASSES), width=1 / 16)
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    checkpoint.save_model(path, random_variables(create_model("fcn32s", len(CLASSES), width=1 / 16)),
                          checkpoint.model_meta(config, CLASSES, "caffe", source="test"))
    return path


def exif_rotated(size, orientation):
    image = Image.new("RGB", size, (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, size[0] // 2, size[1] // 4))  # a blue block at the top left
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image, exif


def test_to_rgb_modes(tmp_path):
    gray16 = Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16))
    assert gray16.mode.startswith("I;16")
    np.testing.assert_array_equal(to_rgb(gray16)[0, :, 0], [0, 100, 255])
    np.testing.assert_array_equal(to_rgb(Image.fromarray(np.array([[0, 70000]], np.int32)))[0, :, 1], [0, 255])
    np.testing.assert_array_equal(to_rgb(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)))[0, :, 2],
                                  [0, 128, 255])
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 1] = (10, 20, 30, 255)  # pixel 0 fully transparent -> white
    np.testing.assert_array_equal(to_rgb(Image.fromarray(rgba, "RGBA")), [[[255, 255, 255], [10, 20, 30]]])
    for mode in ("L", "LA", "P", "CMYK", "1", "YCbCr"):
        out = to_rgb(Image.new(mode, (5, 3)))
        assert out.shape == (3, 5, 3) and out.dtype == np.uint8, mode
    image, exif = exif_rotated((40, 20), 6)  # 6: rotate 90 degrees clockwise to display
    image.save(tmp_path / "r.jpg", quality=95, exif=exif)
    rotated = load_image(str(tmp_path / "r.jpg"))
    assert rotated.shape == (40, 20, 3)
    assert rotated[2, -3, 2] > 150 and rotated[-3, 2, 0] > 150  # the blue block is now at the top right


def test_find_images(tmp_path):
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "a.JPG").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    found = list(find_images([str(tmp_path), str(tmp_path / "notes.txt"), str(tmp_path / "empty"), "nope.png"]))
    assert [(os.path.basename(p), e) for p, e in found] == [
        ("a.JPG", None), ("b.png", None), ("notes.txt", None),
        ("empty", "directory holds no image files"), ("nope.png", "no such file or directory")]
    with pytest.raises(ValueError, match="cannot read image"):
        load_image(str(tmp_path / "notes.txt"))


def odd_images(inputs):
    """Images of odd modes and sizes in ``inputs`` (a directory), a corrupt one and a stem used twice."""
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(inputs / "rgb.png")
    Image.fromarray((rng.integers(0, 65536, (29, 31))).astype(np.uint16)).save(inputs / "gray16.png")
    Image.fromarray(rng.integers(0, 256, (1, 1, 4), dtype=np.uint8), "RGBA").save(inputs / "dot.png")
    Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)).convert("P").save(inputs / "pal.gif")
    image, exif = exif_rotated((53, 37), 8)
    image.convert("CMYK").save(inputs / "cmyk_rotated.jpg", exif=exif)
    good = (inputs / "rgb.png").read_bytes()
    (inputs / "corrupt.png").write_bytes(good[: len(good) // 2])
    (inputs / "rgb.jpg").write_bytes((inputs / "cmyk_rotated.jpg").read_bytes())  # same stem as rgb.png


def own_cache(root):
    """The environment of ``test_second_run_compiles_nothing``'s runs: a compilation cache of their own."""
    env = dict(os.environ, FCN_JAX_COMPILATION_CACHE=str(root / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def predict_py(model_dir, *args):
    return [sys.executable, os.path.join(ROOT, "predict.py"), "--ckpt", model_dir, *args]


@pytest.fixture(scope="module", autouse=True)
def started(request, early_runs, tmp_path_factory):
    """Starts the ``predict.py`` processes that wait for no other test (when their test is selected) with the
    module's first test, so that they run while the tests before theirs do. {test: its directory}"""
    roots = {}
    for test in ("test_predict_cli_odd_images_and_a_corrupt_file", "test_second_run_compiles_nothing"):
        if early_runs.selected(test):
            roots[test] = tmp_path_factory.mktemp(test)
    if not roots:
        return roots
    model_dir = request.getfixturevalue("model_dir")
    if "test_predict_cli_odd_images_and_a_corrupt_file" in roots:
        root = roots["test_predict_cli_odd_images_and_a_corrupt_file"]
        odd_images(root / "in")
        early_runs.start("odd", predict_py(model_dir, str(root / "in"), str(root / "missing.png"), "--out",
                                           str(root / "out"), "--probs"), cwd=ROOT)
    if "test_second_run_compiles_nothing" in roots:
        root = roots["test_second_run_compiles_nothing"]
        image = root / "in" / "a.png"
        image.parent.mkdir()
        Image.fromarray(np.full((21, 17, 3), 90, np.uint8)).save(image)
        early_runs.start("first run", predict_py(model_dir, str(image), "--out", str(root / "out0")), cwd=ROOT,
                         env=own_cache(root))
    return roots


def test_predict_cli_odd_images_and_a_corrupt_file(started, early_runs):
    out = started["test_predict_cli_odd_images_and_a_corrupt_file"] / "out"
    code, stdout, stderr = early_runs.result("odd", 300)
    assert code == 1, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("predict.py: error:")]
    assert len(errors) == 2, stderr[-3000:]
    assert "corrupt.png" in errors[0] and "missing.png: no such file or directory" in errors[1]
    expected = {"rgb": (53, 37), "rgb_2": (37, 53), "gray16": (29, 31), "dot": (1, 1), "pal": (37, 53),
                "cmyk_rotated": (53, 37)}  # rgb.jpg comes first: rgb.png gets the stem rgb_2
    for stem, (h, w) in expected.items():
        with Image.open(out / f"{stem}.png") as label:
            assert label.mode == "P" and label.size == (w, h), stem
            values = np.asarray(label)
        with Image.open(out / f"{stem}_overlay.png") as picture:
            assert picture.mode == "RGB" and picture.width > w and picture.height >= h
        probs = np.load(out / f"{stem}_probs.npy")
        assert probs.shape == (h, w, len(CLASSES)) and probs.dtype == np.float16
        np.testing.assert_allclose(probs.astype(np.float32).sum(-1), 1, atol=1e-2)
        chosen = np.take_along_axis(probs, values[..., None].astype(np.int64), -1)[..., 0]
        assert (chosen >= probs.max(-1) - 2e-3).all()  # the label is the argmax (up to float16 rounding)
    assert not (out / "corrupt.png").exists()
    assert len(stdout.splitlines()) == len(expected)


def test_predict_usage_errors(model_dir, tmp_path, capsys):
    from fcn_jax.cli.predict import main
    image = tmp_path / "in" / "x.png"
    image.parent.mkdir()
    Image.fromarray(np.full((9, 7, 3), 200, np.uint8)).save(image)
    out = tmp_path / "out"
    assert main(["--ckpt", str(tmp_path / "nothing"), str(image), "--out", str(out)]) == 2
    assert main(["--ckpt", model_dir, str(image), "--out", str(out), "--alpha", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"predict.py: error: --ckpt {tmp_path / 'nothing'}: no such file or directory",
                   "predict.py: error: --alpha must lie in [0, 1], got 2.0"]
    empty = tmp_path / "empty"
    empty.mkdir()  # nothing to segment: a usage error before anything is created (it was exit 1, an empty --out)
    for inputs in ([str(empty)], [str(empty), str(tmp_path / "missing.png")]):
        assert main(["--ckpt", model_dir, *inputs, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"predict.py: error: {empty}: directory holds no image files; no image to segment"]
    (out / "x.png").parent.mkdir()
    (out / "x.png").write_bytes(b"")  # --out a file
    assert main(["--ckpt", model_dir, str(image), "--out", str(out / "x.png")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"predict.py: error: --out {out / 'x.png'}: exists and is not a directory"]
    assert sorted(os.listdir(tmp_path)) == ["empty", "in", "out"]
    assert os.listdir(out) == ["x.png"]


def test_predict_never_overwrites_inputs_or_results(model_dir, tmp_path, capsys):
    """--out equal to an input directory (or an input file's directory) is refused before anything is
    written, so a label map can never replace the input photo nor be read as an input by the next run;
    a second run into the same --out continues the first (here: nothing left to do), and replaces results of
    other settings, or of a run that kept no record, only with --overwrite."""
    from fcn_jax.cli.predict import main
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((9, 7, 3), 200, np.uint8)).save(photos / "cat.png")
    before = (photos / "cat.png").read_bytes()
    for inputs in ([str(photos)], [str(photos / "cat.png")]):
        assert main(["--ckpt", model_dir, *inputs, "--out", str(photos)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {photos} holds the input" in err[0], err
    assert sorted(os.listdir(photos)) == ["cat.png"] and (photos / "cat.png").read_bytes() == before
    out = tmp_path / "out"
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out)]) == 0
    written = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    assert sorted(written) == [".fcn-predict.jsonl", "cat.png", "cat_overlay.png"]
    capsys.readouterr()
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out)]) == 0  # the same run again: nothing to do
    assert capsys.readouterr().out.splitlines() == [
        f"{out}: every image's results are complete already (1 of 1); nothing to do"]
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == written
    for flags, named in ((["--alpha", "0.3"], "alpha: 0.5 -> 0.3"),
                         (["--probs"], 'probs: false -> true; probs_dtype: null -> "float16"'),
                         (["--flip"], "flip: false -> true")):
        assert main(["--ckpt", model_dir, str(photos), "--out", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--out {out} holds results made with other settings ({named}); pass " \
            "--overwrite" in err[0], err
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == written
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out), "--alpha", "0.3", "--overwrite"]) == 0
    assert all((out / name).stat().st_mtime_ns > written[name] for name in written)
    os.remove(out / ".fcn-predict.jsonl")  # results of a version that kept no record: replaced only with --overwrite
    assert main(["--ckpt", model_dir, str(photos), "--out", str(out)]) == 2
    assert "already holds 2 result files (e.g. cat.png) but no record of the run that made them; pass " \
        "--overwrite" in capsys.readouterr().err


def test_second_run_compiles_nothing(model_dir, started, early_runs):
    """The tools turn on JAX's persistent compilation cache: a second identical run adds no cache entry,
    i.e. every program it needed was found on disk instead of being compiled again."""
    root = started["test_second_run_compiles_nothing"]
    image, cache = root / "in" / "a.png", root / "cache"
    entries = []
    for run in range(2):
        if run == 0:  # started with the module
            code, _, stderr = early_runs.result("first run", 300)
        else:
            proc = subprocess.run(predict_py(model_dir, str(image), "--out", str(root / f"out{run}")),
                                  capture_output=True, text=True, timeout=300, cwd=ROOT, env=own_cache(root))
            code, stderr = proc.returncode, proc.stderr
        assert code == 0, stderr[-3000:]
        entries.append(sorted(os.listdir(cache)))
    assert entries[0] and entries[1] == entries[0]
    np.testing.assert_array_equal(np.asarray(Image.open(root / "out0" / "a.png")),
                                  np.asarray(Image.open(root / "out1" / "a.png")))
