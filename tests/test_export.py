"""StableHLO export (``fcn_jax.deploy``, ``python -m fcn_jax.export``): the deserialized artifact, called through
``jax.export`` alone, against ``model.apply`` at the model's own variables (random, every BatchNorm different), at
two sizes and batch 2; the uint8 graph against ``fcn_jax.Inference``; sizes the artifact does not take."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import benchmark as bench
from fcn_jax import checkpoint
from fcn_jax.cli.export import main
from fcn_jax.config import ModelConfig
from fcn_jax.deploy import export_model
from fcn_jax.inference import forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("background", "disc", "square", "triangle")


def random_variables(config: ModelConfig, seed: int = 0) -> dict:
    """Every collection of ``config``'s network, random: He-scaled kernels, biases and BatchNorm means in
    [-0.3, 0.3], scales and variances in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(bench.synthetic_variables(config))
    return traverse_util.unflatten_dict({k: (rng.uniform(0.5, 2.0, v.shape) if k[-1] in ("scale", "var") else
                                             rng.uniform(-0.3, 0.3, v.shape) if v.ndim == 1 else v).astype(np.float32)
                                         for k, v in flat.items()})


def saved(tmp_path_factory, config: ModelConfig, convention: str) -> tuple[str, dict]:
    path = str(tmp_path_factory.mktemp("ckpt") / config.variant)
    variables = random_variables(config)
    checkpoint.save_model(path, variables, checkpoint.model_meta(config, CLASSES, convention, source="test"))
    return path, variables


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory):
    config = ModelConfig(variant="fcn8s", num_classes=len(CLASSES), width=1 / 16)
    return (config, *saved(tmp_path_factory, config, "caffe"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    config = ModelConfig(variant="fcn-resnet50", num_classes=len(CLASSES), width=1 / 16)
    return (config, *saved(tmp_path_factory, config, "torchvision"))


def load(path: str):
    with open(path, "rb") as f:
        return jax.export.deserialize(f.read())


def reference(config: ModelConfig, variables: dict, x: np.ndarray) -> np.ndarray:
    return np.asarray(forward(config.build(), variables, jnp.asarray(x))["out"])


def assert_close(got, want):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


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


def test_symbolic_size_artifact_equals_the_model_at_two_sizes(resnet, tmp_path, tmp_path_factory):
    config, path, variables = resnet
    out = str(tmp_path / "resnet.stablehlo")
    result = export_model(path, out)
    assert result.input_shape == ("b", "h", "w", 3)
    exported = load(out)
    rng = np.random.default_rng(2)
    for shape in ((2, 33, 47, 3), (1, 64, 40, 3)):
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(exported.call(x), reference(config, variables, x))
    alexnet = ModelConfig(variant="fcn-alexnet", num_classes=len(CLASSES), width=1 / 16)
    alexnet_path, alexnet_variables = saved(tmp_path_factory, alexnet, "caffe")  # ceil pools with symbolic pads
    export_model(alexnet_path, out + "-alexnet")
    for shape in ((2, 37, 53, 3), (1, 48, 33, 3)):
        x = (50 * rng.standard_normal(shape)).astype(np.float32)
        assert_close(load(out + "-alexnet").call(x), reference(alexnet, alexnet_variables, x))
    with pytest.raises(ValueError) as error:  # below the smallest size it was exported for
        exported.call(np.zeros((1, 31, 40, 3), np.float32))
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


def test_cli_writes_the_artifact_and_refuses_bad_input(fcn8s, tmp_path, capsys):
    _, path, _ = fcn8s
    out = str(tmp_path / "cli.stablehlo")
    assert main([path, "--out", out]) == 2  # a VGG FCN needs a fixed size: one line, nothing written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fcn8s: its size arithmetic cannot be exported" in err[0] and "--image-size HxW" in err[0]
    assert not os.path.exists(out) and not os.path.exists(out + ".json")
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


# ------------------------------------------------------------------------------------------------- ONNX

ONNX_CASES = [  # variant, convention, batch (None: dynamic), sizes (H, W) exported
    ("fcn8s", "caffe", None, ((37, 53), (64, 45))),
    ("fcn-alexnet", "caffe", None, ((41, 35),)),
    ("fcn-googlenet", "caffe", None, ((35, 47),)),
    ("fcn-resnet50", "torchvision", 2, ((33, 47),)),
    ("fcn-vgg11bn", "torchvision", 2, ((45, 39),)),
]


def ort_session(path: str):
    ort = pytest.importorskip("onnxruntime")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant, convention, batch, sizes", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_file_on_onnxruntime_equals_the_model(variant, convention, batch, sizes, tmp_path_factory, tmp_path):
    """onnxruntime (graph optimisations on) on the exported file against ``model.apply``: max error 1e-4 of the
    largest logit, argmax agreement >= 0.999, batch 2 (and batch 1 where the batch is dynamic)."""
    pytest.importorskip("jax2onnx")
    config = ModelConfig(variant=variant, num_classes=len(CLASSES), width=1 / 16)
    path, variables = saved(tmp_path_factory, config, convention)
    rng = np.random.default_rng(4)
    for height, width in sizes:
        out = str(tmp_path / f"{variant}-{height}x{width}.onnx")
        result = export_model(path, out, format="onnx", image_size=(height, width), batch_size=batch)
        assert result.input_shape == ("B" if batch is None else batch, height, width, 3)
        session = ort_session(out)
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["class_names"]) == list(CLASSES) and meta["preprocessing"] == convention
        assert meta["variant"] == variant and meta["fcn_jax_version"] == fcn_jax.__version__
        for n in (2,) if batch else (2, 1):
            x = (50 if convention == "caffe" else 1) * rng.standard_normal((n, height, width, 3)).astype(np.float32)
            got = session.run(None, {"input": x})[0]
            want = reference(config, variables, x)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.999


def test_onnx_uint8_graph_gives_the_labels_of_inference(fcn8s, tmp_path):
    pytest.importorskip("jax2onnx")
    config, path, variables = fcn8s
    out = str(tmp_path / "seg.onnx")
    export_model(path, out, format="onnx", image_size=(29, 41), with_preprocessing=True, probabilities=True)
    images = np.random.default_rng(5).integers(0, 256, (2, 29, 41, 3), dtype=np.uint8)
    labels, probs = ort_session(out).run(None, {"images": images})
    segment = fcn_jax.Inference(config.build(), variables, "caffe")
    for image, label, prob in zip(images, labels, probs):
        want_label, want_prob = segment.predict(image, probabilities=True)
        np.testing.assert_array_equal(label, want_label)
        np.testing.assert_allclose(prob, want_prob, atol=1e-4)  # float rounding of the two graphs


def test_onnx_refusals_are_one_line(fcn8s, resnet, tmp_path, capsys):
    pytest.importorskip("jax2onnx")
    for path, args, message in (
            (fcn8s[1], [], "--image-size: ONNX export has fixed height and width here; pass --image-size HxW"),
            (fcn8s[1], ["--image-size", "32", "--dtype", "bfloat16"], "--dtype bfloat16: ONNX export is float32"),
            (resnet[1], ["--image-size", "33x47"],
             "fcn-resnet50: its graph needs a fixed batch size for ONNX; pass --batch-size N")):
        out = str(tmp_path / "x.onnx")
        assert main([path, "--out", out, "--format", "onnx", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not os.path.exists(out)


def test_onnx_without_the_extra_is_one_line_naming_it(fcn8s, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # as if not installed: import raises ImportError
    out = str(tmp_path / "x.onnx")
    assert main([fcn8s[1], "--out", out, "--format", "onnx", "--image-size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'fcn-jax[onnx]'" in err[0], err
    assert not os.path.exists(out)
