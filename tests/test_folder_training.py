"""Your own data end to end: a folder of images and masks -> fine-tune from a 21-class checkpoint with
class weights -> eval (classes and colours from the folder) -> predict -> score the saved predictions.

The folder is ``shapes/tiny`` exported in the folder format (48 train / 16 val, palette PNG masks, a
classes.txt with colours); every expectation is computed here from the files themselves.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from fcn_jax import checkpoint
from fcn_jax.config import ModelConfig
from fcn_jax.data.to_folder import export_folder
from test_evaluate import random_variables

WIDTH = "0.0625"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Exports the folder, writes a 21-class fcn32s checkpoint and fine-tunes it on the folder (2 steps)."""
    from fcn_jax.cli import train as train_cli
    root = tmp_path_factory.mktemp("own_data")
    folder = str(root / "cells")
    export_folder("shapes/tiny", folder, data_dir=str(root / "tfds"), progress=False)
    voc = str(root / "voc21")
    config = ModelConfig("fcn32s", 21, width=float(WIDTH))
    # random weights from the parameter shapes (no init program to compile: only the layer shapes matter here)
    checkpoint.save_model(voc, random_variables(config.build(), seed=3),
                          checkpoint.model_meta(config, [f"voc{i}" for i in range(21)], "torchvision"))
    workdir = str(root / "run")
    argv = ["--variant", "fcn32s", "--dataset", f"folder:{folder}", "--width", WIDTH, "--steps", "2",
            "--batch-size", "2", "--crop-size", "48", "--eval-every", "2", "--checkpoint-every", "2",
            "--eval-batch-size", "4", "--class-weights", "frequency", "--init", voc, "--workdir", workdir,
            "--no-progress"]
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = train_cli.main(argv)
    assert code == 0, out.getvalue()[-3000:]
    return {"folder": folder, "voc": voc, "workdir": workdir, "out": out.getvalue(), "root": root}


def _classes(folder):
    lines = [line.split() for line in open(os.path.join(folder, "classes.txt")) if line.strip()]
    return [(parts[0], tuple(int(v) for v in parts[1:4])) for parts in lines if parts[0] != "void"]


def test_training_on_a_folder_takes_its_classes_weights_and_colours(run):
    classes = _classes(run["folder"])
    assert len(classes) == 7
    with open(os.path.join(run["workdir"], "config.json")) as f:
        config = json.load(f)
    assert config["model"]["num_classes"] == 7  # from the folder: no --num-classes was given
    assert config["dataset"] == f"folder:{run['folder']}"
    # median-frequency weights from the training masks, counted here with NumPy
    counts = np.zeros(7, np.int64)
    masks = os.path.join(run["folder"], "masks", "train")
    for name in os.listdir(masks):
        values = np.asarray(Image.open(os.path.join(masks, name)))
        counts += np.bincount(values[values < 7], minlength=7)
    freq = counts / counts.sum()
    expected = np.median(freq[counts > 0]) / freq
    np.testing.assert_allclose([float(w) for w in config["class_weights"].split(",")], expected, rtol=1e-5)
    assert "class weights: background " in run["out"]
    # the fine-tuning report: backbone copied, the 21-class score layer re-initialised for 7 classes
    assert f"init from {run['voc']} (fcn32s, 21 classes, step 0):" in run["out"]
    assert "copied 15 of 17 layers: backbone (15 layers)" in run["out"]
    assert "re-initialised for fcn32s with 7 classes: score_fr (zeros), upscore (bilinear, fixed)" in run["out"]
    # names and colours travel into the checkpoint
    _, meta = checkpoint.load_model(run["workdir"], "latest")
    assert meta["class_names"] == [name for name, _ in classes]
    assert [tuple(c) for c in meta["colours"]] == [colour for _, colour in classes]
    with open(os.path.join(run["workdir"], "dataset.json")) as f:
        runs = json.load(f)["runs"]
    assert len(runs) == 1 and runs[0]["start_step"] == 0 and "changes" not in runs[0]
    summary = runs[0]["dataset"]
    assert sorted(summary["stems"]["val"]) == sorted(os.path.splitext(n)[0] for n in
                                                     os.listdir(os.path.join(run["folder"], "images", "val")))


def test_eval_predict_and_score_use_the_folders_classes(run, capsys):
    from fcn_jax.cli import eval as eval_cli
    from fcn_jax.cli import predict as predict_cli
    from fcn_jax.score import score_dirs
    classes = _classes(run["folder"])
    pictures = str(run["root"] / "pictures")
    assert eval_cli.main(["--ckpt", run["workdir"], "--step", "latest", "--save-predictions", pictures,
                          "--no-progress"]) == 0
    printed = capsys.readouterr().out
    path = os.path.join(run["workdir"], "eval_folder-cells_val_step2.json")
    assert f"results written to {path}" in printed
    with open(path) as f:
        record = json.load(f)
    assert record["num_images"] == 16 and list(record["per_class_iu"]) == [name for name, _ in classes]
    label = Image.open(os.path.join(pictures, sorted(f for f in os.listdir(pictures) if f.endswith(".png") and "_panel" not in f)[0]))
    palette = np.asarray(label.getpalette()[:21]).reshape(7, 3)
    np.testing.assert_array_equal(palette, [colour for _, colour in classes])  # the folder's own colours
    # scoring eval's saved predictions against the folder's masks gives eval's numbers
    scored = score_dirs(pictures, os.path.join(run["folder"], "masks", "val"), num_classes=7, progress=False)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert scored[key] == pytest.approx(record[key], abs=1e-9), key
    out = str(run["root"] / "predicted")
    image = os.path.join(run["folder"], "images", "val", sorted(os.listdir(os.path.join(run["folder"], "images",
                                                                                         "val")))[0])
    assert predict_cli.main(["--ckpt", run["workdir"], image, "--out", out]) == 0
    stem = os.path.splitext(os.path.basename(image))[0]
    overlay = Image.open(os.path.join(out, f"{stem}_overlay.png"))
    assert overlay.mode == "RGB" and overlay.height >= Image.open(image).height
    assert np.asarray(Image.open(os.path.join(out, f"{stem}.png")).getpalette()[:21]).reshape(7, 3).tolist() == \
        [list(colour) for _, colour in classes]
