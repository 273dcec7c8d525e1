"""eval.py end to end on a checkpoint trained for a few steps on shapes; its JSON; its user errors."""
import datetime
import json
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fcn_jax import checkpoint, create_model, load_model
from fcn_jax.config import ModelConfig
from fcn_jax.data import SHAPES_CLASSES, load_split
from fcn_jax.cli.eval import main
from fcn_jax.preprocess import preprocess
from test_evaluate import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "shapes/tiny"
JSON_FIELDS = {"checkpoint", "step", "dataset", "split", "commit", "variant", "num_images", "images_per_s",
               "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "tta", "date"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint dir, data dir): a width-1/16 fcn32s whose score layer took 3 SGD steps on two shapes
    training images (the head only: a full backward pass compiles too slowly for a unit test)."""
    data_dir = str(tmp_path_factory.mktemp("data"))
    train = load_split(DATASET, "train", data_dir=data_dir)
    images = np.stack([preprocess(train[i]["image"][:40, :40]) for i in range(2)])
    labels = np.stack([train[i]["segmentation"][:40, :40].astype(np.int32) for i in range(2)])
    model = create_model("fcn32s", len(SHAPES_CLASSES), width=1 / 16)
    params = random_variables(model)["params"]
    optimizer = optax.sgd(1e-3, momentum=0.9)

    @jax.jit
    def step(head, opt_state, params, images, labels):
        def loss_fn(head):
            logits = model.apply({"params": {**params, "score_fr": head}}, images)
            valid = labels != 255
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
            return jnp.sum(jnp.where(valid, ce, 0)) / jnp.sum(valid)

        loss, grads = jax.value_and_grad(loss_fn)(head)
        updates, opt_state = optimizer.update(grads, opt_state, head)
        return optax.apply_updates(head, updates), opt_state, loss

    head, opt_state, losses = params["score_fr"], optimizer.init(params["score_fr"]), []
    for _ in range(3):
        head, opt_state, loss = step(head, opt_state, params, images, labels)
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    ckpt = str(tmp_path_factory.mktemp("run") / "model")
    config = ModelConfig(variant="fcn32s", num_classes=len(SHAPES_CLASSES), width=1 / 16)
    # the run's validation setting, the default eval.py takes from a checkpoint: one 128 px bucket, one program
    meta = checkpoint.model_meta(config, SHAPES_CLASSES, "caffe",
                                 config={"dataset": DATASET, "data_dir": data_dir, "eval_bucket_multiple": 128})
    checkpoint.save_model(ckpt, {"params": {**params, "score_fr": jax.device_get(head)}}, meta, step=3)
    return ckpt, data_dir


def check_record(record, ckpt):
    assert JSON_FIELDS <= set(record)
    assert record["checkpoint"] == os.path.abspath(ckpt) and record["step"] == 3
    assert record["dataset"] == DATASET and record["split"] == "validation" and record["variant"] == "fcn32s"
    assert record["num_images"] == 16 and record["images_per_s"] > 0
    assert record["commit"] is None or len(record["commit"]) == 40
    datetime.datetime.fromisoformat(record["date"])
    assert list(record["per_class_iu"]) == list(SHAPES_CLASSES)
    ius = [v for v in record["per_class_iu"].values() if v is not None]
    assert ius and record["mean_iu"] == pytest.approx(np.mean(ius))
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert 0 <= record[key] <= 1, key


@pytest.fixture(scope="module", autouse=True)
def eval_py_run(request, early_runs, tmp_path_factory):
    """Starts ``python eval.py`` of ``test_eval_py_end_to_end`` (when selected) as soon as the checkpoint exists:
    it waits for no other test, and runs while the in-process tests compile (that test comes last). (pictures
    dir, JSON path)"""
    if not early_runs.selected("test_eval_py_end_to_end"):
        return None
    ckpt, data_dir = request.getfixturevalue("trained")
    root = tmp_path_factory.mktemp("eval_py")
    pictures, out = root / "pictures", root / "results" / "eval.json"
    cmd = [sys.executable, os.path.join(ROOT, "eval.py"), "--ckpt", ckpt, "--data-dir", data_dir,
           "--batch-size", "2", "--bucket-multiple", "32", "--save-predictions", str(pictures),
           "--num-pictures", "3", "--json", str(out), "--no-progress"]
    early_runs.start("eval.py", cmd, cwd=ROOT)
    return pictures, out


def test_eval_tta_and_default_json_next_to_checkpoint(trained, capsys):
    ckpt, _ = trained  # dataset, data directory and buckets: the training run's, as recorded in the checkpoint
    assert main(["--ckpt", ckpt, "--flip", "--scales", "0.75,1", "--batch-size", "4", "--no-progress"]) == 0
    path = os.path.join(ckpt, "eval_shapes-tiny_validation_step3_flip_scales0.75-1.json")  # another step or TTA
    # setting gets another name: results never replace each other
    with open(path) as f:
        record = json.load(f)
    check_record(record, ckpt)
    assert record["tta"] == {"flip": True, "scales": [0.75, 1.0]} and record["bucket_multiple"] == 128
    assert f"results written to {path}" in capsys.readouterr().out
    assert load_model(ckpt)[2].step == 3  # the results file does not disturb the checkpoint


def test_eval_user_errors_are_one_line(trained, tmp_path, capsys):
    ckpt, data_dir = trained
    bare = str(tmp_path / "bare")
    config = ModelConfig(variant="fcn32s", num_classes=len(SHAPES_CLASSES), width=1 / 16)
    checkpoint.save_model(bare, random_variables(create_model("fcn32s", len(SHAPES_CLASSES), width=1 / 16)),
                          checkpoint.model_meta(config, SHAPES_CLASSES, "caffe"))
    base = ["--ckpt", ckpt, "--data-dir", data_dir, "--no-progress"]
    cases = [
        (base + ["--dataset", "voc_segmentation/sbd_fcn"], "--dataset voc_segmentation/sbd_fcn has 21 classes"),
        (base + ["--split", "nope"], "--split nope:"),
        (base + ["--step", "99"], f"--ckpt {ckpt}: no step 99"),
        (base + ["--batch-size", "0"], "--batch-size must be at least 1"),
        (base + ["--void-value", "300"], "--void-value must be in 0..255 (masks are 8-bit), got 300"),
        (base + ["--void-value", "-1"], "--void-value must be in 0..255"),
        (["--ckpt", str(tmp_path / "missing")], "no such file or directory"),
        (["--ckpt", bare, "--data-dir", data_dir], "--dataset is required"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("eval.py: error: ") and message in err[0], (argv, err)
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--scales", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scales" in err[0]


def test_eval_weights_file(trained, tmp_path, monkeypatch, capsys):
    import fcn_jax.weights
    ckpt, data_dir = trained
    variables, meta = checkpoint.load_model(ckpt)
    weights = tmp_path / "fcn32s_shapes.pth"
    weights.write_bytes(b"")

    def load(path, variant=None, num_classes=None, **kwargs):
        assert path == str(weights)
        return variables["params"], {"model": meta["model"], "preprocessing": "caffe", "format": "test"}  # no names

    monkeypatch.setattr(fcn_jax.weights, "load", load)
    argv = ["--ckpt", str(weights), "--dataset", DATASET, "--data-dir", data_dir, "--batch-size", "2",
            "--bucket-multiple", "128", "--no-progress"]  # every image in one bucket: one program
    assert main(argv) == 0
    with open(tmp_path / "fcn32s_shapes_eval_shapes-tiny_validation.json") as f:
        record = json.load(f)
    assert record["step"] is None and record["dtype"] == "float32" and record["num_images"] == 16
    assert list(record["per_class_iu"]) == [f"class_{i}" for i in range(len(SHAPES_CLASSES))]
    assert "class names differ" in capsys.readouterr().err


def test_dtype_is_the_only_model_override(trained):
    model, _, info = load_model(trained[0], "latest", dtype="bfloat16")
    assert info.config.dtype == "bfloat16" and model.dtype == jnp.bfloat16
    assert info.config.width == 1 / 16 and info.step == 3 and info.preprocessing == "caffe"
    assert info.class_names == tuple(SHAPES_CLASSES)


def test_eval_py_end_to_end(trained, eval_py_run, early_runs):
    ckpt, _ = trained
    pictures, out = eval_py_run
    code, stdout, stderr = early_runs.result("eval.py", 300)
    assert code == 0, stderr[-3000:]
    record = json.loads(out.read_text())
    check_record(record, ckpt)
    assert record["tta"] == {"flip": False, "scales": [1.0]} and record["batch_size"] == 2
    assert "mean IU" in stdout and all(name in stdout for name in SHAPES_CLASSES)
    files = sorted(os.listdir(pictures))
    assert files[0] == ".fcn-eval.jsonl" and len(files) == 7 and sum(f.endswith("_panel.png") for f in files) == 3
    lines = [json.loads(line) for line in (pictures / ".fcn-eval.jsonl").read_text().splitlines()]
    assert lines[0]["settings"]["ckpt"] == os.path.realpath(ckpt) and len(lines) == 4  # the settings, 3 images
    assert sorted(f for line in lines[1:] for f in line["files"]) == files[1:]
    assert f"predictions written to {pictures}: 3 images" in stdout
