"""Sliding-window inference (``Inference(tile=...)``, ``predict.py --max-side/--tile``): one window is
whole-image inference bit for bit; several windows average the scores a by-hand NumPy derivation gets
(bit for bit); test-time augmentation runs per window; windows that do not see the whole image stay close to it."""
import os

import jax
import numpy as np
import pytest
from PIL import Image

import fcn_jax
from fcn_jax import checkpoint, create_model
from fcn_jax.config import ModelConfig
from fcn_jax.inference import Inference
from fcn_jax.preprocess import preprocess
from test_evaluate import random_variables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("background", "disc", "square", "triangle", "bar")


@pytest.fixture(scope="module")
def net():
    model = create_model("fcn8s", len(CLASSES), width=1 / 32)
    return model, random_variables(model)


def picture(height, width):
    """The shapes example stretched to (height, width): large regions, so labels form regions too."""
    with Image.open(os.path.join(ROOT, "docs", "examples", "shapes_0.png")) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.BILINEAR))


def starts(size, crop, tile, overlap):
    """The documented rule, written out: stride T - round(overlap T), floored to a multiple of 32 if at
    least 32; windows at 0, S, 2S, ... until one reaches the end, that one moved back to end at ``size``."""
    stride = tile - round(overlap * tile)
    stride = stride // 32 * 32 if stride >= 32 else max(stride, 1)
    out, y = [], 0
    while True:
        out.append(min(y, size - crop))
        if y + crop >= size:
            return out
        y += stride


def by_hand(window_scores, image, tile, overlap):
    """Average of ``window_scores(window)`` (h, w, C) over windows, by a NumPy loop with a count map."""
    height, width = image.shape[:2]
    h, w = min(tile, height), min(tile, width)
    total, count = None, np.zeros((height, width, 1), np.float32)
    for y in starts(height, h, tile, overlap):
        for x in starts(width, w, tile, overlap):
            scores = np.asarray(window_scores(image[y:y + h, x:x + w]), np.float32)
            total = np.zeros((height, width, scores.shape[-1]), np.float32) if total is None else total
            total[y:y + h, x:x + w] += scores
            count[y:y + h, x:x + w] += 1
    assert count.min() >= 1  # the windows cover the image
    return total / count


def test_one_window_is_whole_image_inference_bit_for_bit(net):
    model, variables = net
    image = np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8)
    for flip, scales in ((False, (1.0,)), (True, (0.75,))):
        whole = Inference(model, variables, "caffe", flip=flip, scales=scales)
        tiled = Inference(model, variables, "caffe", flip=flip, scales=scales, tile=64, max_side=0)
        assert whole.windows(45, 60) is None and tiled.windows(45, 60) == [(0, 0, 45, 60)]
        label, probs = whole.predict(image, probabilities=True)
        tiled_label, tiled_probs = tiled.predict(image, probabilities=True)
        np.testing.assert_array_equal(tiled_label, label)
        np.testing.assert_array_equal(tiled.scores(image), whole.scores(image))
        if flip:  # the averaged probabilities are the scores themselves
            np.testing.assert_array_equal(tiled_probs, probs)
        else:  # softmax of the logits: NumPy's on the host instead of XLA's
            np.testing.assert_allclose(tiled_probs, probs, rtol=1e-6, atol=1e-7)
        assert len(np.unique(label)) > 2


@pytest.mark.parametrize("shape", [(100, 130), (40, 130)])
def test_window_scores_are_averaged_as_by_hand(net, shape):
    """Several windows (three rows of four at 100 x 130; at 40 x 130 one row of 40 x 48 windows): the
    averaged scores equal plain ``model.apply`` on each window, placed and averaged by NumPy."""
    model, variables = net
    image = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    segment = Inference(model, variables, "caffe", tile=48, overlap=0.3)  # stride 48 - 14 = 34 -> 32
    windows = segment.windows(*shape)
    assert len(windows) == (12 if shape[0] == 100 else 4)
    assert {(y, x) for y, x, _, _ in windows} == {(y, x) for y in starts(shape[0], min(48, shape[0]), 48, 0.3)
                                                  for x in starts(shape[1], 48, 48, 0.3)}
    apply = jax.jit(model.apply)
    expected = by_hand(lambda tile: apply(variables, preprocess(tile[None], "caffe"))[0], image, 48, 0.3)
    # equal to the last bit: the same compiled arithmetic per window, the same order of additions
    np.testing.assert_array_equal(segment.scores(image), expected)
    label, probs = segment.predict(image, probabilities=True)
    np.testing.assert_array_equal(label, np.argmax(expected, -1))
    e = np.exp(expected - expected.max(-1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert segment(image).shape == shape and len(np.unique(label)) > 2


def test_test_time_augmentation_runs_per_window(net):
    """flip + scales: each window's probabilities averaged over its mirrored and rescaled passes (derived
    here from model.apply, jax.image.resize and a NumPy softmax), then averaged over the windows."""
    model, variables = net
    image = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    scales = (0.5, 1.25)
    segment = Inference(model, variables, "caffe", tile=48, overlap=1 / 3, flip=True, scales=scales)
    assert len(segment.windows(70, 90)) == 6

    apply = jax.jit(model.apply)

    def window_probs(tile):
        h, w = tile.shape[:2]
        x = preprocess(tile[None], "caffe")
        total = 0
        for s in scales:
            size = (round(h * s), round(w * s))
            xs = jax.image.resize(x, (1, *size, 3), "bilinear")
            for mirrored in (False, True):
                logits = apply(variables, xs[:, :, ::-1] if mirrored else xs)
                logits = logits[:, :, ::-1] if mirrored else logits
                logits = np.asarray(jax.image.resize(logits, (1, h, w, logits.shape[-1]), "bilinear"))[0]
                e = np.exp(logits - logits.max(-1, keepdims=True))
                total = total + e / e.sum(-1, keepdims=True)
        return total / (2 * len(scales))

    expected = by_hand(window_probs, image, 48, 1 / 3)
    label, probs = segment.predict(image, probabilities=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
    np.testing.assert_array_equal(label, np.argmax(probs, -1))


def test_tiles_that_do_not_see_the_whole_image_stay_close():
    """Windows on a 224 x 192 picture lack the context beyond them. Measured with these random weights
    (fcn8s, width 1/16), the fraction of labels equal to whole-image inference: 96 x 96 windows (nine, at
    offsets 0/64/128 x 0/64/96) 88.2%, 128 x 128 (four) 91.8%, one 224 x 192 window 100%. Bounds asserted:
    85%, 90%, exact. (Windows off the 32-pixel grid do much worse: stride 67 instead of 64 gave 57.1%,
    stride 40 61.1%; hence the stride is rounded down to a multiple of 32.)"""
    model = create_model("fcn8s", len(CLASSES), width=1 / 16)
    variables = random_variables(model)
    image = picture(224, 192)
    whole = Inference(model, variables, "caffe")(image)
    agreement = {tile: float((Inference(model, variables, "caffe", tile=tile, max_side=0)(image) == whole).mean())
                 for tile in (96, 128, 224)}
    assert agreement[96] >= 0.85 and agreement[128] >= 0.90 and agreement[224] == 1.0, agreement
    assert len(np.unique(whole)) > 2


def test_argument_errors(net, tmp_path):
    model, variables = net
    for kwargs, message in (({"tile": 31}, "tile must be None or an integer >= 32, got 31"),
                            ({"tile": 64.0}, "tile must be None or an integer >= 32, got 64.0"),
                            ({"tile": True}, "tile must be None or an integer >= 32, got True"),
                            ({"tile": 64, "overlap": 1.0}, r"overlap must lie in \[0, 1\), got 1.0"),
                            ({"overlap": -0.1}, r"overlap must lie in \[0, 1\), got -0.1"),
                            ({"overlap": "0.5"}, r"overlap must lie in \[0, 1\), got '0.5'"),
                            ({"tile": 64, "max_side": -1}, "max_side must be None or an integer >= 0, got -1")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            Inference(model, variables, "caffe", **kwargs)
        with pytest.raises(ValueError, match=f"^{message}$"):  # before looking for the checkpoint
            fcn_jax.predict(tmp_path / "missing", np.zeros((8, 8, 3), np.uint8), **kwargs)
    segment = Inference(model, variables, "caffe", tile=np.int64(32), overlap=0, max_side=40)
    assert (segment.tile, segment.overlap, segment.max_side) == (32, 0.0, 40)
    assert segment.windows(40, 40) is None and len(segment.windows(41, 40)) == 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    config = ModelConfig(variant="fcn32s", num_classes=len(CLASSES), width=1 / 32)
    path = str(tmp_path_factory.mktemp("ckpt") / "model")
    checkpoint.save_model(path, random_variables(config.build()),
                          checkpoint.model_meta(config, CLASSES, "caffe", source="test"))
    return path


def test_predict_cli_tiles_images_above_max_side(model_dir, tmp_path, capsys):
    from fcn_jax.cli.predict import main
    inputs = tmp_path / "in"
    inputs.mkdir()
    big, small = picture(150, 110), picture(60, 50)
    Image.fromarray(big).save(inputs / "big.png")
    Image.fromarray(small).save(inputs / "small.png")
    out = tmp_path / "out"
    assert main(["--ckpt", model_dir, str(inputs), "--out", str(out), "--max-side", "100", "--tile", "64",
                 "--overlap", "0.25", "--probs", "--probs-dtype", "float32"]) == 0
    assert "big.png" in capsys.readouterr().out
    tiled = Inference.load(model_dir, tile=64, overlap=0.25, max_side=100)
    assert len(tiled.windows(150, 110)) == 12 and tiled.windows(60, 50) is None  # stride 48 -> 32: 4 x 3
    for name, image in (("big", big), ("small", small)):
        with Image.open(out / f"{name}.png") as label:
            assert label.mode == "P" and label.size == image.shape[1::-1]
            np.testing.assert_array_equal(np.asarray(label), tiled(image))
        probs = np.load(out / f"{name}_probs.npy")
        assert probs.shape == (*image.shape[:2], len(CLASSES))
        np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
    # --max-side 0 never tiles: the big image is segmented whole
    assert main(["--ckpt", model_dir, str(inputs / "big.png"), "--out", str(tmp_path / "whole"),
                 "--max-side", "0", "--tile", "64"]) == 0
    with Image.open(tmp_path / "whole" / "big.png") as label:
        np.testing.assert_array_equal(np.asarray(label), Inference.load(model_dir)(big))
    for flags, message in ((["--tile", "16"], "--tile must be >= 32, got 16"),
                           (["--overlap", "1"], r"--overlap must lie in [0, 1), got 1.0"),
                           (["--max-side", "-5"], "--max-side must be >= 0 (0: never tile), got -5")):
        capsys.readouterr()
        assert main(["--ckpt", model_dir, str(inputs), "--out", str(tmp_path / "x"), *flags]) == 2
        assert capsys.readouterr().err.strip() == f"predict.py: error: {message}"
        assert not (tmp_path / "x").exists()


def test_out_of_memory_on_one_image_fails_that_image_only(model_dir, tmp_path, capsys, monkeypatch):
    """The forward pass running out of device memory (XLA's RESOURCE_EXHAUSTED) or host memory
    (MemoryError) on one image is one error line for it, with what to change; the next images still run."""
    from fcn_jax.cli.predict import main
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name, size in (("a_huge", (90, 120)), ("b_fine", (30, 40)), ("c_tiled", (150, 130)), ("d_fine", (20, 20))):
        Image.fromarray(picture(*size)).save(inputs / f"{name}.png")
    whole = Inference._whole

    def whole_fails(self, image, probabilities):
        if image.shape[:2] == (90, 120):  # run whole (below --max-side 128): the device runs out of memory
            raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                             "12884901888 bytes.\nBufferAssignment OOM Debugging.\n...")
        return whole(self, image, probabilities)

    def window_fails(self, image):  # a window of c_tiled (above --max-side 128): the host runs out of memory
        raise MemoryError("Unable to allocate 12.0 GiB for an array with shape (4, 4) and data type float32")

    monkeypatch.setattr(Inference, "_whole", whole_fails)
    monkeypatch.setattr(Inference, "_forward", window_fails)
    code = main(["--ckpt", model_dir, str(inputs), "--out", str(tmp_path / "out"), "--max-side", "128",
                 "--tile", "64", "--probs"])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.err.splitlines() == [
        f"predict.py: error: {inputs / 'a_huge.png'}: RESOURCE_EXHAUSTED: Out of memory while trying to "
        "allocate 12884901888 bytes.; set --max-side below 120 to tile this image",
        f"predict.py: error: {inputs / 'c_tiled.png'}: out of host memory (Unable to allocate 12.0 GiB for "
        "an array with shape (4, 4) and data type float32); try a smaller --tile"]
    assert sorted(os.listdir(tmp_path / "out")) == [".fcn-predict.jsonl"] + sorted(
        f"{stem}{suffix}" for stem in ("b_fine", "d_fine") for suffix in (".png", "_overlay.png", "_probs.npy"))
    assert len(captured.out.splitlines()) == 2
