"""fcn_jax.score / ``python -m fcn_jax.score``: label PNG folders scored against independent re-derivations
of the reference's score.py (a loop over pixels, and fast_hist written out), its CLI output, JSON and errors."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fcn_jax.cli.score import main
from fcn_jax.data.folder import read_classes
from fcn_jax.score import score_dirs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "python -m fcn_jax.score: error: "
KEYS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")


# ------------------------------------------------------------------ independent references

def loop_scores(pairs, n):
    """score.py's metrics by a loop over pixels: void ground truth skipped; a prediction outside 0..n-1
    or 255 is a miss of its ground-truth class (counts in that class's total, in no class's predictions)."""
    tp, gt_total, pred_total = [0] * n, [0] * n, [0] * n
    for gt, pred in pairs:
        for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
            if g == 255:
                continue
            assert 0 <= g < n
            gt_total[g] += 1
            if 0 <= p < n and p != 255:
                pred_total[p] += 1
                tp[g] += p == g
    total = sum(gt_total)
    acc = [tp[c] / gt_total[c] if gt_total[c] else math.nan for c in range(n)]
    union = [gt_total[c] + pred_total[c] - tp[c] for c in range(n)]
    iu = [tp[c] / union[c] if union[c] else math.nan for c in range(n)]
    present = [v for v in iu if not math.isnan(v)]
    return {
        "pixel_acc": sum(tp) / total,
        "mean_acc": sum(v for v in acc if not math.isnan(v)) / sum(not math.isnan(v) for v in acc),
        "mean_iu": sum(present) / len(present),
        "fw_iu": sum(gt_total[c] / total * iu[c] for c in range(n) if gt_total[c]),
        "iu": iu, "num_pixels": total, "num_invalid": total - sum(1 for gt, pred in pairs
                                                                   for g, p in zip(gt.ravel(), pred.ravel())
                                                                   if g != 255 and 0 <= p < n and p != 255),
    }


def fast_hist_scores(pairs, n):
    """The reference's score.py, written out: fast_hist summed over images, then compute_hist's scores."""
    hist = np.zeros((n, n))
    for gt, pred in pairs:
        a, b = gt.flatten(), pred.flatten()
        k = (a >= 0) & (a < n)
        hist += np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        mean_acc = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
        freq = hist.sum(1) / hist.sum()
    return {"pixel_acc": acc, "mean_acc": mean_acc, "mean_iu": np.nanmean(iu),
            "fw_iu": (freq[freq > 0] * iu[freq > 0]).sum(), "iu": iu, "hist": hist}


def check_scores(result, expected):
    for key in KEYS:
        assert result[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), key
    np.testing.assert_allclose(result["iu"], expected["iu"], rtol=1e-12, equal_nan=True)


# ------------------------------------------------------------------ writing label PNGs

def palette_png(path, label):
    """A palette PNG (pixel index = value) with an arbitrary palette, written with PIL alone."""
    image = Image.frombytes("P", label.shape[::-1], np.ascontiguousarray(label.astype(np.uint8)).tobytes())
    image.putpalette(np.random.default_rng(7).integers(0, 256, 768).astype(np.uint8).tolist())
    image.save(path)
    with Image.open(path) as check:
        assert check.mode == "P"


def gray_png(path, label):
    Image.fromarray(label.astype(np.uint8)).save(path)
    with Image.open(path) as check:
        assert check.mode == "L"


def gray16_png(path, label):
    Image.fromarray(label.astype(np.uint16)).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I")


WRITERS = (palette_png, gray_png, gray16_png)


def random_pair(rng, shape, n, void=0.1, invalid=0.0, out_values=(255,)):
    gt = rng.integers(0, n, shape)
    pred = np.where(rng.random(shape) < 0.5, gt, rng.integers(0, n, shape))  # half right, half random
    gt[rng.random(shape) < void] = 255
    bad = rng.random(shape) < invalid
    pred[bad] = rng.choice(out_values, size=int(bad.sum()))
    return gt, pred


def write_folders(tmp_path, pairs, writers=WRITERS, extras=True):
    """GT and prediction folders of ``pairs``, formats cycling through ``writers``; predict.py's extras too."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    for i, (gt, pred) in enumerate(pairs):
        writers[i % len(writers)](gt_dir / f"img_{i:03d}.png", gt)
        writers[(i + 1) % len(writers)](pred_dir / f"img_{i:03d}.png", pred)
        if extras:
            Image.new("RGB", (5, 5)).save(pred_dir / f"img_{i:03d}_overlay.png")
            np.save(pred_dir / f"img_{i:03d}_probs.npy", np.zeros(3))
    (gt_dir / "notes.txt").write_text("not a label file")
    return str(pred_dir), str(gt_dir)


SHAPES = ((17, 23), (40, 31), (8, 64), (33, 33), (1, 9))


@pytest.fixture
def mixed(tmp_path):
    """6 classes; void pixels; predictions 255, 6 and 7 (outside 0..5) on some labelled pixels."""
    rng = np.random.default_rng(0)
    pairs = [random_pair(rng, shape, 6, invalid=0.05, out_values=(255, 6, 7)) for shape in SHAPES]
    return pairs, *write_folders(tmp_path, pairs)


# ------------------------------------------------------------------ the library

def test_scores_equal_a_loop_over_pixels(mixed):
    pairs, pred_dir, gt_dir = mixed
    result = score_dirs(pred_dir, gt_dir, num_classes=6, progress=False)
    expected = loop_scores(pairs, 6)
    check_scores(result, expected)
    assert expected["num_invalid"] > 0 and result["num_invalid"] == expected["num_invalid"]
    assert result["num_pixels"] == expected["num_pixels"] == sum(int((g != 255).sum()) for g, _ in pairs)
    assert result["num_void"] == sum(int((g == 255).sum()) for g, _ in pairs)
    assert result["num_images"] == len(SHAPES) and result["num_classes"] == 6
    assert result["class_names"] == tuple("012345")
    assert sorted(os.path.basename(p) for p in result["ignored"]) == [f"img_{i:03d}_overlay.png"
                                                                      for i in range(len(SHAPES))]


def test_in_range_predictions_equal_score_py_fast_hist(tmp_path):
    """Number of classes inferred: the largest value (here only in a late prediction) + 1."""
    rng = np.random.default_rng(1)
    pairs = [random_pair(rng, shape, 5) for shape in SHAPES]
    pairs[3][1][0, 0] = 6  # class 6 only predicted (IU 0), class 5 nowhere (nan)
    pred_dir, gt_dir = write_folders(tmp_path, pairs)
    result = score_dirs(pred_dir, gt_dir, progress=False)
    expected = fast_hist_scores(pairs, 7)
    check_scores(result, expected)
    assert result["num_classes"] == 7 and result["num_invalid"] == 0
    np.testing.assert_array_equal(result["confusion"][:, :7], expected["hist"])
    assert result["iu"][6] == 0 and math.isnan(result["iu"][5])


def test_rgb_masks_with_class_colours(tmp_path):
    colours = [(0, 0, 0), (200, 10, 10), (10, 200, 10), (10, 10, 200)]
    void = (224, 224, 192)
    classes = tmp_path / "classes.txt"
    classes.write_text("# my classes\nbackground 0 0 0\n\nred 200 10 10\ngreen 10 200 10\nblue 10 10 200\n"
                       "void 224 224 192\n")
    table = np.array(colours + [void] * 252, np.uint8)  # value -> colour (255 -> void)
    rng = np.random.default_rng(3)
    pairs = [random_pair(rng, shape, 4) for shape in SHAPES[:3]]
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir(), pred_dir.mkdir()
    for i, (gt, pred) in enumerate(pairs):
        Image.fromarray(table[gt]).save(gt_dir / f"{i}.png")  # RGB ground truth
        palette_png(pred_dir / f"{i}.png", pred)
    parsed = read_classes(classes)
    assert parsed.names == ("background", "red", "green", "blue") and parsed.colours == tuple(colours)
    assert parsed.void_colour == void
    result = score_dirs(str(pred_dir), str(gt_dir), class_names=parsed.names, colours=parsed.colours,
                        void_colour=parsed.void_colour, progress=False)
    check_scores(result, loop_scores(pairs, 4))
    check_scores(result, fast_hist_scores(pairs, 4))
    assert result["class_names"] == parsed.names


# ------------------------------------------------------------------ the command line

def test_cli_prints_and_writes_the_scores(mixed, tmp_path, capsys):
    pairs, pred_dir, gt_dir = mixed
    names = ["background", "a", "b", "c", "d", "e"]
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(names) + "\n")
    out = tmp_path / "res" / "scores.json"
    assert main([pred_dir, gt_dir, "--classes", str(classes), "--json", str(out), "--no-progress"]) == 0
    expected = loop_scores(pairs, 6)
    lines = capsys.readouterr().out.splitlines()
    void = sum(int((g == 255).sum()) for g, _ in pairs)
    assert lines[0] == (f"{pred_dir} against {gt_dir}: {len(pairs)} images, {expected['num_pixels']} pixels scored, "
                        f"{void} void pixels skipped, 6 classes")
    assert lines[1] == f"{expected['num_invalid']} scored pixels predicted void (255) or outside 0..5, counted as wrong"
    assert lines[2] == f"ignored {len(pairs)} prediction files without ground truth (*_overlay, *_probs, *_panel)"
    printed = {" ".join(line.split()[:-1]): line.split()[-1] for line in lines[3:] if len(line.split()) >= 2}
    for key, label in zip(KEYS, ("pixel accuracy", "mean accuracy", "mean IU", "f.w. IU")):
        assert printed[label] == f"{100 * expected[key]:.2f}", label
    for name, iu in zip(names, expected["iu"]):
        assert printed[name] == f"{100 * iu:.2f}", name
    assert lines[-1] == f"results written to {out}"
    record = json.loads(out.read_text())
    assert record["pred_dir"] == os.path.abspath(pred_dir) and record["gt_dir"] == os.path.abspath(gt_dir)
    assert record["classes_file"] == str(classes)
    assert (record["num_images"], record["num_pixels"], record["num_void"], record["num_invalid"],
            record["num_classes"]) == (len(pairs), expected["num_pixels"], void, expected["num_invalid"], 6)
    for key in KEYS:
        assert record[key] == pytest.approx(expected[key], rel=1e-12), key
    assert list(record["per_class_iu"]) == names
    assert list(record["per_class_iu"].values()) == pytest.approx(expected["iu"], rel=1e-12)


def test_python_m_fcn_jax_score(tmp_path):
    rng = np.random.default_rng(4)
    pairs = [random_pair(rng, (9, 11), 3), random_pair(rng, (5, 7), 3)]
    pairs[0][1][:] = pairs[0][0]  # present classes all right in image 0
    pred_dir, gt_dir = write_folders(tmp_path, pairs, extras=False)
    proc = subprocess.run([sys.executable, "-m", "fcn_jax.score", pred_dir, gt_dir, "--json",
                           str(tmp_path / "s.json")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = fast_hist_scores(pairs, 3)
    assert f"mean IU           {100 * expected['mean_iu']:.2f}" in proc.stdout.splitlines()
    assert "score: 100%" in proc.stderr and "img/s" in proc.stderr  # the progress bar
    record = json.loads((tmp_path / "s.json").read_text())
    assert record["mean_iu"] == pytest.approx(expected["mean_iu"], rel=1e-12)
    assert list(record["per_class_iu"]) == ["0", "1", "2"]



def test_the_library_does_not_import_the_cli():
    """The CLI imports fcn_jax.score, never the reverse: importing the library loads no fcn_jax.cli module, and
    the library names the CLI only inside its ``__main__`` block."""
    code = ("import sys, fcn_jax.score\n"
            "print(sorted(m for m in sys.modules if m.startswith('fcn_jax.cli')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "[]"
    with open(os.path.join(ROOT, "fcn_jax", "score.py")) as f:
        source = f.read()
    library, main_block = source.split('\nif __name__ == "__main__":')
    assert "fcn_jax.cli" not in library.split('"""', 2)[2]  # past the docstring
    assert "from fcn_jax.cli.score import main" in main_block

def test_user_errors_are_one_line(tmp_path, capsys):
    rng = np.random.default_rng(5)
    pairs = [random_pair(rng, (6, 8), 4) for _ in range(5)]
    pairs[2][0][1, 1] = 9  # a ground-truth value >= --num-classes 4

    def folders(name, **changes):
        """Fresh folders of ``pairs`` under ``name``, then ``changes``: file -> bytes, array or None (delete)."""
        (tmp_path / name).mkdir()
        pred_dir, gt_dir = write_folders(tmp_path / name, pairs, extras=False)
        for rel, content in changes.items():
            path = os.path.join(tmp_path / name, rel)
            if content is None:
                os.remove(path)
            elif isinstance(content, bytes):
                with open(path, "wb") as f:
                    f.write(content)
            else:
                Image.fromarray(content).save(path)
        return pred_dir, gt_dir

    pred, gt = folders("ok")
    missing_gt = folders("m1", **{"gt/img_000.png": None, "gt/img_001.png": None})
    missing_pred = folders("m2", **{f"pred/img_00{i}.png": None for i in range(4)})
    size = folders("size", **{"pred/img_003.png": np.zeros((6, 9), np.uint8)})
    broken = folders("broken", **{"gt/img_004.png": b"\x89PNG not really"})
    rgb = folders("rgb", **{"pred/img_001.png": np.full((6, 8, 3), (0, 128, 0), np.uint8)})
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_classes = tmp_path / "bad.txt"
    bad_classes.write_text("a 1 2 3\nb\n")
    three = tmp_path / "three.txt"
    three.write_text("a\nb\nc\n")
    cases = [
        ([pred, str(tmp_path / "nope")], f"GT_DIR {tmp_path / 'nope'}: no such directory"),
        ([str(tmp_path / "nope"), gt], f"PRED_DIR {tmp_path / 'nope'}: no such directory"),
        ([pred, str(empty)], f"GT_DIR {empty}: no .png files"),
        ([str(empty), gt], f"PRED_DIR {empty}: no .png files"),
        (list(missing_gt), f"2 prediction files have no ground truth in {missing_gt[1]}: img_000.png, img_001.png"),
        (list(missing_pred), f"4 of 5 ground-truth files have no prediction in {missing_pred[0]}: "
                             "img_000.png, img_001.png, img_002.png, ..."),
        (list(size), f"{size[0]}/img_003.png is 9x6 but {size[1]}/img_003.png is 8x6 (width x height)"),
        (list(broken), f"{broken[1]}/img_004.png: cannot read mask"),
        (list(rgb), f"{rgb[0]}/img_001.png: RGB colour mask (pixel (x=0, y=0) is (0, 128, 0))"),
        ([pred, gt, "--num-classes", "4"], f"{gt}/img_002.png: label value 9 outside 0..3"),
        ([pred, gt, "--num-classes", "0"], "--num-classes must be in 1..255 (255 is void), got 0"),
        ([pred, gt, "--num-classes", "256"], "--num-classes must be in 1..255 (255 is void), got 256"),
        ([pred, gt, "--classes", str(bad_classes)], f"--classes {bad_classes}:2: no colour on 'b'"),
        ([pred, gt, "--classes", str(tmp_path / "none.txt")], f"--classes {tmp_path / 'none.txt'}: cannot read"),
        ([pred, gt, "--classes", str(three), "--num-classes", "4"], f"--num-classes 4 but --classes {three} lists 3"),
        ([pred, gt, "--classes", str(three)], f"{gt}/img_000.png: label value 3 outside 0..2"),
        ([pred, gt, "--json", str(empty)], f"--json {empty}: Is a directory"),
        ([pred], "the following arguments are required: GT_DIR"),
    ]
    for argv, message in cases:
        assert main(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(PREFIX) and message in err[0], (argv, err, message)
