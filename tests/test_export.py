"""StableHLO export (``fcn_jax.deploy``, ``python -m fcn_jax.export``): the deserialized artifact, called through
``jax.export`` alone, against ``model.apply`` at the model's own variables (random, every BatchNorm different), at
two sizes and batch 2 (one symbolic-size artifact per variant); the uint8 graph against ``fcn_jax.Inference``;
sizes the artifact does not take. ONNX: tests/test_onnx.py."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from exported import CLASSES, assert_close, reference, saved

import fcn_jax
from fcn_jax.cli.export import main
from fcn_jax.config import ModelConfig
from fcn_jax.deploy import export_model
from fcn_jax.models.registry import input_shape

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory):
    config = ModelConfig(variant="fcn8s", num_classes=len(CLASSES), width=1 / 16)
    return (config, *saved(tmp_path_factory, config, "caffe"))


def load(path: str):
    with open(path, "rb") as f:
        return jax.export.deserialize(f.read())


def test_fixed_size_artifact_equals_the_model_at_any_batch(fcn8s, tmp_path):
    config, path, variables = fcn8s
    out = str(tmp_path / "fcn8s.stablehlo")
    result = export_model(path, out, image_size=(37, 53))
    assert result.input_shape == ("b", 37, 53, 3) and result.output_shapes == (("b", 37, 53, 4),)
    exported = load(out)
    assert set(exported.platforms) == {"cpu", "cuda", "tpu"}
    rng = np.random.default_rng(1)
    for batch in (2, 1):
        x = (50 * rng.standard_normal((batch, 37, 53, 3))).astype(np.float32)
        assert_close(exported.call(x), reference(config, variables, x))
    with pytest.raises(Exception, match="37"):  # jax.export names the shape it was exported for
        exported.call(np.zeros((1, 38, 53, 3), np.float32))
    meta = json.loads(open(out + ".json").read())
    assert meta["class_names"] == list(CLASSES) and meta["preprocessing"] == "caffe"
    assert meta["model"]["variant"] == "fcn8s" and meta["nbytes"] == os.path.getsize(out)
    assert meta["input"]["shape"] == ["b", 37, 53, 3] and meta["weights"] == "embedded"


SYMBOLIC_CASES = [  # every reference-geometry family: the artifact returns the main output's logits
    ("fcn32s", "caffe"), ("fcn16s", "caffe"), ("fcn8s", "caffe"), ("fcn8s-atonce", "caffe"),
    ("siftflow-fcn16s", "caffe-siftflow"), ("nyud-fcn32s-color-d", "caffe-nyud"),
    ("nyud-fcn32s-color-hha", "caffe-nyud"), ("fcn-alexnet", "caffe"), ("fcn-googlenet", "caffe"),
    ("fcn-vgg11bn", "torchvision"), ("fcn-resnet50", "torchvision")]


@pytest.mark.parametrize("variant, convention", SYMBOLIC_CASES, ids=[c[0] for c in SYMBOLIC_CASES])
def test_symbolic_size_artifact_equals_the_model_at_two_sizes(variant, convention, tmp_path, tmp_path_factory):
    """One artifact (symbolic batch, height and width) called at two odd sizes, batch 2 and 1: each the logits
    ``model.apply`` computes at that size (Caffe's ceil-mode pools and crops at each)."""
    config = ModelConfig(variant=variant, num_classes=len(CLASSES), width=1 / 16)
    path, variables = saved(tmp_path_factory, config, convention)
    out = str(tmp_path / f"{variant}.stablehlo")
    result = export_model(path, out)
    channels = input_shape(variant)[-1]
    assert result.input_shape == ("b", "h", "w", channels) and result.output_shapes == (("b", "h", "w", 4),)
    exported = load(out)
    rng = np.random.default_rng(2)
    for shape in ((2, 37, 53, channels), (1, 48, 33, channels)):
        x = ((1 if convention == "torchvision" else 50) * rng.standard_normal(shape)).astype(np.float32)
        assert_close(exported.call(x), reference(config, variables, x))
    with pytest.raises(ValueError) as error:  # below the smallest size it was exported for
        exported.call(np.zeros((1, 31, 40, channels), np.float32))
    assert "Input shapes do not match the symbolic shape constraint h >= 32" in str(error.value.__cause__)


def test_uint8_artifact_gives_the_labels_and_probabilities_of_inference(fcn8s, tmp_path):
    config, path, variables = fcn8s
    out = str(tmp_path / "seg.stablehlo")
    export_model(path, out, image_size=(29, 41), batch_size=2, with_preprocessing=True, probabilities=True)
    images = np.random.default_rng(3).integers(0, 256, (2, 29, 41, 3), dtype=np.uint8)
    labels, probs = load(out).call(images)
    segment = fcn_jax.Inference(config.build(), variables, "caffe")
    for image, label, prob in zip(images, np.asarray(labels), np.asarray(probs)):
        want_label, want_prob = segment.predict(image, probabilities=True)
        np.testing.assert_array_equal(label, want_label)
        np.testing.assert_allclose(prob, want_prob, rtol=1e-5, atol=1e-6)


def test_cli_writes_the_artifact_and_refuses_bad_input(fcn8s, tmp_path, tmp_path_factory, capsys):
    _, path, _ = fcn8s
    out = str(tmp_path / "cli.stablehlo")
    same = ModelConfig(variant="fcn32s", num_classes=len(CLASSES), width=1 / 16, padding="same")
    same_path, _ = saved(tmp_path_factory, same, "caffe")
    assert main([same_path, "--out", out]) == 2  # padding 'same' needs a fixed size: one line, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fcn32s with padding 'same' pads its input to a multiple of 32" in err[0], err
    assert "--image-size HxW" in err[0] and not os.path.exists(out) and not os.path.exists(out + ".json")
    proc = subprocess.run([sys.executable, "-m", "fcn_jax.export", path, "--out", out, "--image-size", "40x48",
                           "--batch-size", "1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"wrote {out} (") and "input 1x40x48x3, outputs 1x40x48x4" in proc.stdout
    assert load(out).in_avals[0].shape == (1, 40, 48, 3)
    open(str(tmp_path / "only.stablehlo.json"), "w").close()  # a JSON of that name is not replaced either
    for args, message in (([path, "--out", out, "--image-size", "40"], "already exists"),
                          ([path, "--out", str(tmp_path / "only.stablehlo"), "--image-size", "40"],
                           "only.stablehlo.json already exists"),
                          ([path, "--out", str(tmp_path), "--image-size", "40"], "is a directory"),
                          ([path, "--out", str(tmp_path / "x"), "--probabilities", "--image-size", "40"],
                           "--probabilities: only with --with-preprocessing"),
                          ([str(tmp_path / "missing"), "--out", str(tmp_path / "y")], "no such file or directory")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_a_full_disk_leaves_neither_file(fcn8s, tmp_path, monkeypatch, capsys):
    """The artifact and its JSON are one group: a full disk while writing the second leaves neither, and the
    CLI says so in one line (exit 1)."""
    import errno

    from fcn_jax import deploy
    _, path, _ = fcn8s
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(deploy.os, "fsync", fsync)
    out = str(tmp_path / "full.stablehlo")
    assert main([path, "--out", out, "--image-size", "32", "--batch-size", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0], err
    assert len(calls) == 2 and os.listdir(tmp_path) == []
