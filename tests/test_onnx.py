"""ONNX export (``python -m fcn_jax.export --format onnx``, jax2onnx) and ONNX models in ``fcn_jax.Inference`` /
``predict.py`` (onnxruntime): each exported file on onnxruntime (graph optimisations on) against ``model.apply``
for every single-input variant; the uint8 graph against ``fcn_jax.Inference``; pytorch-fcn's ``.pth`` converted
and exported against the PyTorch network itself; predict.py's label PNGs from the ``.onnx`` against those from
the checkpoint it came from. Skipped, with the reason, where the ``onnx`` extra is not installed."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from exported import CLASSES, reference, saved
from PIL import Image

import fcn_jax
from fcn_jax import onnx_model
from fcn_jax.cli.export import main
from fcn_jax.cli.predict import main as predict_main
from fcn_jax.config import ModelConfig
from fcn_jax.deploy import export_model

ROOT = Path(__file__).resolve().parents[1]


def needs_exporter() -> None:
    pytest.importorskip("jax2onnx", reason="the onnx extra (pip install 'fcn-jax[onnx]') is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'fcn-jax[onnx]') is not installed")


@pytest.fixture(scope="module")
def fcn8s(tmp_path_factory):
    config = ModelConfig(variant="fcn8s", num_classes=len(CLASSES), width=1 / 16)
    return (config, *saved(tmp_path_factory, config, "caffe"))


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    config = ModelConfig(variant="fcn-resnet50", num_classes=len(CLASSES), width=1 / 16)
    return (config, *saved(tmp_path_factory, config, "torchvision"))


ONNX_CASES = [  # variant, convention, batch (None: dynamic), sizes (H, W) exported
    ("fcn32s", "caffe", None, ((37, 53),)),
    ("fcn16s", "caffe", None, ((45, 39),)),
    ("fcn8s", "caffe", None, ((37, 53), (64, 45))),
    ("fcn8s-atonce", "caffe", None, ((39, 45),)),
    ("nyud-fcn32s-color-d", "caffe-nyud", None, ((35, 41),)),
    ("fcn-alexnet", "caffe", None, ((41, 35),)),
    ("fcn-googlenet", "caffe", None, ((35, 47),)),
    ("fcn-resnet50", "torchvision", 2, ((33, 47),)),
    ("fcn-vgg11bn", "torchvision", 2, ((45, 39),)),
]


def ort_session(path: str):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("variant, convention, batch, sizes", ONNX_CASES, ids=[c[0] for c in ONNX_CASES])
def test_onnx_file_on_onnxruntime_equals_the_model(variant, convention, batch, sizes, tmp_path_factory, tmp_path):
    """onnxruntime (graph optimisations on) on the exported file against ``model.apply``: max error 1e-4 of the
    largest logit, argmax agreement >= 0.999, batch 2 (and batch 1 where the batch is dynamic; a fixed batch
    of 2 runs 3 images in padded chunks as an :class:`~fcn_jax.onnx_model.OnnxModel`)."""
    needs_exporter()
    config = ModelConfig(variant=variant, num_classes=len(CLASSES), width=1 / 16)
    path, variables = saved(tmp_path_factory, config, convention)
    rng = np.random.default_rng(4)
    for height, width in sizes:
        out = str(tmp_path / f"{variant}-{height}x{width}.onnx")
        result = export_model(path, out, format="onnx", image_size=(height, width), batch_size=batch)
        channels = 4 if variant.startswith("nyud") else 3
        assert result.input_shape == ("B" if batch is None else batch, height, width, channels)
        session = ort_session(out)
        meta = session.get_modelmeta().custom_metadata_map
        assert json.loads(meta["class_names"]) == list(CLASSES) and meta["preprocessing"] == convention
        assert meta["variant"] == variant and meta["fcn_jax_version"] == fcn_jax.__version__
        for n in (2,) if batch else (2, 1):
            scale = 1 if convention == "torchvision" else 50
            x = (scale * rng.standard_normal((n, height, width, channels))).astype(np.float32)
            got = session.run(None, {"input": x})[0]
            want = reference(config, variables, x)
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
            assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.999
        if batch:
            model, _ = onnx_model.load(out)
            x = rng.standard_normal((3, height, width, channels)).astype(np.float32)
            want = reference(config, variables, x)
            got = np.asarray(model.apply({}, x)["out"])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


def test_onnx_uint8_graph_gives_the_labels_of_inference(fcn8s, tmp_path):
    needs_exporter()
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
    needs_exporter()
    for path, args, message in (
            (fcn8s[1], [], "--image-size: ONNX export needs a fixed height and width"),
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


def test_pytorch_fcn_pth_converted_and_exported_equals_the_pytorch_network(tmp_path):
    """pytorch-fcn's fcn8s state dict (``.pth``, random weights in every layer) -> ``python -m fcn_jax.convert``
    -> ``--format onnx`` -> onnxruntime: the logits the PyTorch network itself computes (tests' independent
    PyTorch FCN, benchmarks/torch_fcn.py)."""
    needs_exporter()
    torch = pytest.importorskip("torch")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from test_parity_torch import NUM_CLASSES, WIDTH, random_reference

    from fcn_jax.cli.convert import main as convert_main
    net = random_reference("fcn8s")
    pth = tmp_path / "fcn8s_from_caffe.pth"
    torch.save(net.state_dict(), pth)
    names = tmp_path / "classes.txt"
    names.write_text("\n".join(f"class{i}" for i in range(NUM_CLASSES)) + "\n")
    assert convert_main([str(pth), "--width", str(WIDTH), "--class-names", str(names),
                         "--out", str(tmp_path / "ckpt")]) == 0
    out = str(tmp_path / "fcn8s.onnx")
    assert main([str(tmp_path / "ckpt"), "--out", out, "--format", "onnx", "--image-size", "37x53"]) == 0
    x = np.random.default_rng(6).uniform(-120, 120, (2, 37, 53, 3)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    got = ort_session(out).run(None, {"input": x})[0]
    assert got.shape == want.shape == (2, 37, 53, NUM_CLASSES)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def write_images(directory: Path) -> dict[str, np.ndarray]:
    """Three PNGs: one at the ONNX file's 48x48, one larger (70x90: windows of 48x48), one narrower (30x90)."""
    rng = np.random.default_rng(7)
    directory.mkdir()
    images = {"same": (48, 48), "large": (70, 90), "small": (30, 90)}
    arrays = {}
    for name, (h, w) in images.items():
        arrays[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(directory / f"{name}.png")
    return arrays


def test_predict_and_inference_on_onnx_equal_the_checkpoint(fcn8s, tmp_path, capsys):
    """predict.py with the ``.onnx`` (48x48) writes the label PNGs predict.py writes with the checkpoint it came
    from (a 48x48 image whole, a 70x90 one as 48x48 windows: the checkpoint run with --tile 48 --max-side 48),
    with flips; an image smaller than 48x48 is one error line (exit 1), the others still written.
    ``fcn_jax.Inference.load`` on the file: the checkpoint's probabilities (1e-4)."""
    needs_exporter()
    config, path, variables = fcn8s
    out = str(tmp_path / "fcn8s.onnx")
    export_model(path, out, format="onnx", image_size=(48, 48))
    arrays = write_images(tmp_path / "images")
    images = str(tmp_path / "images")
    assert predict_main([images, "--ckpt", out, "--out", str(tmp_path / "onnx"), "--flip"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"predict.py: error: {images}/small.png: 90x30 (WxH) is smaller than the model's fixed 48x48 "
                   f"input; export it at a smaller --image-size"]
    assert predict_main([images, "--ckpt", path, "--out", str(tmp_path / "jax"), "--flip", "--tile", "48",
                         "--max-side", "48"]) == 0
    for name in ("same", "large"):
        onnx_png = np.asarray(Image.open(tmp_path / "onnx" / f"{name}.png"))
        jax_png = np.asarray(Image.open(tmp_path / "jax" / f"{name}.png"))
        assert onnx_png.shape == arrays[name].shape[:2]
        np.testing.assert_array_equal(onnx_png, jax_png)
    assert not os.path.exists(tmp_path / "onnx" / "small.png")

    segment = fcn_jax.Inference.load(out)
    want = fcn_jax.Inference(config.build(), variables, "caffe", tile=48, max_side=48)
    for name in ("same", "large"):
        np.testing.assert_allclose(segment.predict(arrays[name], probabilities=True)[1],
                                   want.predict(arrays[name], probabilities=True)[1], atol=1e-4)
    assert segment.class_names == CLASSES


def test_onnx_models_refused_in_predict_are_one_line(fcn8s, tmp_path, capsys):
    """--scales and --dtype with an ONNX model, a --with-preprocessing file, a file that is not ONNX: one line,
    exit 2, no --out created."""
    needs_exporter()
    _, path, _ = fcn8s
    plain, labels = str(tmp_path / "plain.onnx"), str(tmp_path / "labels.onnx")
    export_model(path, plain, format="onnx", image_size=(32, 32))
    export_model(path, labels, format="onnx", image_size=(32, 32), with_preprocessing=True)
    Path(tmp_path / "junk.onnx").write_bytes(b"not a model")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    for ckpt, args, message in (
            (plain, ["--scales", "0.5,1"], "--scales: an ONNX model runs at its exported size only"),
            (plain, ["--dtype", "bfloat16"], "--dtype bfloat16: an ONNX model computes in the dtype it was exported"),
            (labels, [], f"--ckpt {labels}: exported with --with-preprocessing"),
            (str(tmp_path / "junk.onnx"), [], "not an ONNX model onnxruntime can run")):
        out = tmp_path / "out"
        assert predict_main([str(tmp_path / "a.png"), "--ckpt", ckpt, "--out", str(out), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert not out.exists()
    meta = json.loads(ort_session(labels).get_modelmeta().custom_metadata_map["with_preprocessing"])
    assert meta is True


def test_an_onnx_file_elsewhere_is_one_line_naming_where_it_runs(tmp_path, capsys):
    """eval.py, convert, --init and load_model read variables, which an exported file does not have: one line
    saying where it runs (no onnxruntime needed to say so)."""
    from fcn_jax.cli.eval import main as eval_main
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="an exported ONNX model runs in predict.py and fcn_jax.Inference only"):
        fcn_jax.load_model(str(path))
    assert eval_main(["--ckpt", str(path), "--dataset", "shapes"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an exported ONNX model runs in predict.py" in err[0], err
