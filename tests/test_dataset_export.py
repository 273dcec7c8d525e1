"""fcn_jax.data.to_folder / ``python -m fcn_jax.dataset export``: a registered dataset written as an image folder,
checked file by file against the examples read independently through fcn_jax.data.load_split; and the old
``python -m fcn_jax.export`` form, which names the new command."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fcn_jax.viz
from fcn_jax.cli.dataset import main
from fcn_jax.data import SHAPES_CLASSES, DataError, load_split
from fcn_jax.data.to_folder import export_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "shapes/tiny"
PREFIX = "python -m fcn_jax.dataset export: error: "
SPLITS = {"train": "train", "val": "validation"}  # folder -> tfds split


def voc_colour(i):
    """The PASCAL VOC colour map (VOCdevkit's labelcolormap): bit k of i's r/g/b bit planes -> bit 7-k."""
    r = g = b = 0
    for k in range(8):
        r |= ((i >> (3 * k)) & 1) << (7 - k)
        g |= ((i >> (3 * k + 1)) & 1) << (7 - k)
        b |= ((i >> (3 * k + 2)) & 1) << (7 - k)
    return r, g, b


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """shapes/tiny built once for the module (a few seconds)."""
    path = str(tmp_path_factory.mktemp("data"))
    load_split(DATASET, "train", data_dir=path)
    return path


@pytest.fixture(scope="module")
def examples(data_dir):
    """{folder: {stem: example}} read through the dataset's own reader."""
    out = {}
    for folder, split in SPLITS.items():
        source = load_split(DATASET, split, data_dir=data_dir)
        out[folder] = {source[i]["file_name"].decode(): source[i] for i in range(len(source))}
    return out


def read_png(path):
    with Image.open(path) as image:
        return image.mode, np.asarray(image), image.getpalette()


def check_masks(out, examples, folder, stems):
    files = sorted(os.listdir(os.path.join(out, "masks", folder)))
    assert files == sorted(f"{stem}.png" for stem in stems)
    for stem in stems:
        mode, mask, palette = read_png(os.path.join(out, "masks", folder, f"{stem}.png"))
        assert mode == "P"
        np.testing.assert_array_equal(mask, examples[folder][stem]["segmentation"])
        assert palette[:3 * 256] == [c for i in range(256) for c in voc_colour(i)]


def test_png_export_is_pixel_exact(data_dir, examples, tmp_path):
    out = str(tmp_path / "folder")
    before = "tensorflow" in sys.modules
    counts = export_folder(DATASET, out, data_dir=data_dir, progress=False)
    assert before or "tensorflow" not in sys.modules
    assert counts == {"train": 48, "val": 16}
    assert sorted(os.listdir(tmp_path)) == ["folder"]  # no staging directory left beside it
    assert sorted(os.listdir(out)) == ["classes.txt", "images", "masks"]
    for kind in ("images", "masks"):
        assert sorted(os.listdir(os.path.join(out, kind))) == ["train", "val"]
    for folder, by_stem in examples.items():
        assert sorted(os.listdir(os.path.join(out, "images", folder))) == sorted(f"{s}.png" for s in by_stem)
        for stem, example in by_stem.items():
            mode, image, _ = read_png(os.path.join(out, "images", folder, f"{stem}.png"))
            assert mode == "RGB"
            np.testing.assert_array_equal(image, example["image"])
        check_masks(out, examples, folder, list(by_stem))
    with open(os.path.join(out, "classes.txt")) as f:
        lines = f.read().splitlines()
    assert lines == [f"{name} {' '.join(map(str, voc_colour(i)))}" for i, name in enumerate(SHAPES_CLASSES)] + [
        "void 224 224 192"]


def test_export_reads_back_as_a_folder_dataset_and_scores_itself(data_dir, examples, tmp_path, capsys):
    """The tutorial's path: the export is a ``folder:`` dataset and ``--classes`` file as written."""
    from fcn_jax.cli.score import main as score
    out = str(tmp_path / "folder")
    export_folder(DATASET, out, data_dir=data_dir, limit=4, progress=False)
    for folder in SPLITS:
        source = load_split(f"folder:{out}", folder)
        assert len(source) == 4
        for i in range(4):
            example = source[i]
            expected = examples[folder][str(example["file_name"])]
            np.testing.assert_array_equal(example["image"], expected["image"])
            np.testing.assert_array_equal(example["segmentation"], expected["segmentation"])
    masks = os.path.join(out, "masks", "val")
    assert score([masks, masks, "--classes", os.path.join(out, "classes.txt"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "mean IU          100.00" in printed and "ring" in printed


def test_jpg_and_limit(data_dir, examples, tmp_path):
    out = str(tmp_path / "jpg")
    counts = export_folder(DATASET, out, data_dir=data_dir, image_format="jpg", limit=5, progress=False)
    assert counts == {"train": 5, "val": 5}
    for folder in SPLITS:
        names = sorted(os.listdir(os.path.join(out, "images", folder)))
        assert len(names) == 5 and all(n.endswith(".jpg") for n in names)
        stems = [n[:-4] for n in names]
        assert set(stems) <= set(examples[folder])
        for stem in stems:
            mode, image, _ = read_png(os.path.join(out, "images", folder, f"{stem}.jpg"))
            diff = np.abs(image.astype(int) - examples[folder][stem]["image"].astype(int))
            assert mode == "RGB" and diff.mean() < 4 and diff.max() <= 48, (stem, diff.mean(), diff.max())
        check_masks(out, examples, folder, stems)  # masks stay lossless


def test_out_dir_rules(data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty"):
        export_folder(DATASET, str(out), data_dir=data_dir, limit=1, progress=False)
    with pytest.raises(DataError, match="is not an exported dataset folder"):
        export_folder(DATASET, str(out), data_dir=data_dir, limit=1, overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory is written into
    assert export_folder(DATASET, str(empty), data_dir=data_dir, limit=2, progress=False) == {"train": 2, "val": 2}
    assert export_folder(DATASET, str(empty), data_dir=data_dir, limit=1, overwrite=True,
                         progress=False) == {"train": 1, "val": 1}
    assert len(os.listdir(empty / "images" / "train")) == 1  # replaced, not merged

    calls = []

    def interrupted(label):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return colorize(label)

    colorize = fcn_jax.viz.colorize
    monkeypatch.setattr(fcn_jax.viz, "colorize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_folder(DATASET, str(tmp_path / "cut"), data_dir=data_dir, progress=False)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export_folder(DATASET, str(empty), data_dir=data_dir, overwrite=True, progress=False)
    assert len(os.listdir(empty / "images" / "train")) == 1  # the earlier export is intact
    # the unfinished exports keep their complete examples (2: the third was cut off), nothing half-written
    assert sorted(os.listdir(tmp_path)) == ["cut.partial", "empty", "empty.partial", "out"]
    train = load_split(DATASET, "train", data_dir=data_dir)
    first = sorted(train[i]["file_name"].decode() for i in range(2))
    for partial in ("cut.partial", "empty.partial"):
        files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / partial)
                       for d, _, names in os.walk(tmp_path / partial) for f in names)
        assert files == [".fcn-export.jsonl", "classes.txt"] + [
            f"{kind}/train/{stem}.png" for kind in ("images", "masks") for stem in first]


def test_interrupted_export_keeps_complete_examples_and_continues(data_dir, examples, tmp_path, monkeypatch,
                                                                  capsys):
    """SIGTERM half way through the third mask: the two complete examples stay in OUT_DIR.partial, the
    message counts them, and the same command continues without rewriting them, ending pixel exact."""
    import signal
    out = tmp_path / "folder"
    argv = ["export", DATASET, str(out), "--data-dir", data_dir, "--limit", "3", "--no-progress"]
    save, masks = Image.Image.save, []

    def cut(self, fp, format=None, **params):
        if isinstance(fp, str) and os.sep + "masks" + os.sep in fp:
            masks.append(fp)
            if len(masks) == 3:
                with open(fp, "wb") as f:
                    f.write(b"\x89PNG half")
                signal.raise_signal(signal.SIGTERM)
        return save(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", cut)
    assert main(argv) == 143
    partial = tmp_path / "folder.partial"
    assert capsys.readouterr().err.splitlines() == [
        f"{PREFIX}interrupted by SIGTERM; 2 of 6 examples are complete in {partial}; run the same command again to "
        f"continue"]
    assert sorted(os.listdir(tmp_path)) == ["folder.partial"]
    for kind in ("images", "masks"):
        assert len(os.listdir(partial / kind / "train")) == 2  # no third file, whole or partial
    kept = {f: os.stat(os.path.join(d, f)).st_mtime_ns for d, _, names in os.walk(partial / "masks") for f in names}
    monkeypatch.undo()
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"continuing the unfinished export in {partial}: 2 of 6 examples are complete already (skipped)"
    assert sorted(os.listdir(tmp_path)) == ["folder"] and sorted(os.listdir(out)) == ["classes.txt", "images", "masks"]
    for folder in SPLITS:
        stems = [n[:-4] for n in os.listdir(out / "images" / folder)]
        assert len(stems) == 3
        check_masks(str(out), examples, folder, stems)
        for stem in stems:
            np.testing.assert_array_equal(read_png(out / "images" / folder / f"{stem}.png")[1],
                                          examples[folder][stem]["image"])
    assert all(os.stat(out / "masks" / "train" / f).st_mtime_ns == t for f, t in kept.items())  # not rewritten


def test_python_m_fcn_jax_dataset_export(data_dir, examples, tmp_path):
    out = str(tmp_path / "shapes_folder")
    proc = subprocess.run([sys.executable, "-m", "fcn_jax.dataset", "export", DATASET, out, "--data-dir", data_dir,
                           "--limit", "3"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == (f"wrote {out} from {DATASET}: classes.txt, train 3 images, val 3 images "
                                            "(png; masks as palette PNGs)")
    assert "export: 100%" in proc.stderr and "img/s" in proc.stderr  # the progress bar
    for folder in SPLITS:
        check_masks(out, examples, folder, [n[:-4] for n in os.listdir(os.path.join(out, "images", folder))])


def test_cli_user_errors_are_one_line(data_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    cases = [
        ([DATASET, str(full)], f"{full}: exists and is not empty (pass --overwrite"),
        ([DATASET, str(full), "--overwrite"], f"{full}: exists and is not an exported dataset folder"),
        ([DATASET, str(tmp_path / "a"), "--splits", "train,test"], "shapes/tiny has no split 'test'"),
        ([DATASET, str(tmp_path / "a"), "--limit", "0"], "--limit must be at least 1, got 0"),
        (["nope/tiny", str(tmp_path / "a")], "unknown dataset 'nope/tiny'"),
        ([DATASET, str(tmp_path / "a"), "--image-format", "gif"], "argument --image-format: invalid choice"),
        ([DATASET, str(tmp_path / "a"), "--splits", "train,,"], "argument --splits: expected comma-separated"),
    ]
    for argv, message in cases:
        assert main(["export"] + argv + ["--data-dir", data_dir, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(PREFIX) and message in err[0], (argv, err)
    assert sorted(os.listdir(tmp_path)) == ["full"]


def test_cli_needs_a_command(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m fcn_jax.dataset: error: ") and "COMMAND" in err[0], err
    assert main(["--help"]) == 0 and "export" in capsys.readouterr().out
    assert main(["export", "--help"]) == 0 and "--image-format" in capsys.readouterr().out


def test_old_python_m_fcn_jax_export_names_the_new_command(tmp_path, capsys):
    """``python -m fcn_jax.export`` is for model export now: the old dataset form gets one line and exit 2."""
    from fcn_jax import export
    out = str(tmp_path / "my folder")
    assert export.main([DATASET, out, "--limit", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "python -m fcn_jax.export: error: fcn_jax.export no longer exports datasets (the name is for model export); "
        f"to export a dataset to a folder use: python -m fcn_jax.dataset export {DATASET} '{out}' --limit 3"]
    proc = subprocess.run([sys.executable, "-m", "fcn_jax.export", "shapes", out], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "python -m fcn_jax.export: error: fcn_jax.export no longer exports datasets (the name is for model export); "
        f"to export a dataset to a folder use: python -m fcn_jax.dataset export shapes '{out}'"]
    assert not os.path.exists(out)
