"""Sharded evaluation: on-device confusion matrix, padding never counted, flips, 4 devices == 1 device."""
import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import create_model
from fcn_jax.evaluate import evaluate, make_eval_step
from fcn_jax.inference import class_scores, mirror
from fcn_jax.metrics import scores
from fcn_jax.parallel import make_mesh, put_replicated
from fcn_jax.preprocess import preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 5


def random_variables(model, seed=0):
    """Random but well-scaled ``{'params': ...}`` for ``model`` without running its (slow) init."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) == 1:
            return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        return (rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))).astype(np.float32)

    return jax.tree.map(fill, shapes)


def make_examples(sizes, num_classes=N, seed=0):
    """Pipeline examples of the given (h, w) sizes: random images, labels with about 10% void."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[rng.random((h, w)) < 0.1] = 255
        out.append({"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "segmentation": label,
                    "file_name": f"img{i}"})
    return out


@dataclasses.dataclass
class Batch:
    """The fields of ``fcn_jax.data.pipeline.EvalBatch`` that evaluate() reads."""

    image: np.ndarray
    label: np.ndarray
    sizes: np.ndarray
    names: list
    indices: np.ndarray


def batches(source, batch_size, multiple):
    """Evaluation batches as the pipeline makes them: whole images top-left in (H, W) rounded up to
    ``multiple``, image padding 0 (the mean colour), label padding 255, all-void filler rows at the end."""
    out = []
    for start in range(0, len(source), batch_size):
        rows = [r if r < len(source) else -1 for r in range(start, start + batch_size)]
        shapes = [source[r]["segmentation"].shape for r in rows if r >= 0]
        height, width = (-(-max(s[i] for s in shapes) // multiple) * multiple for i in (0, 1))
        image = np.zeros((batch_size, height, width, 3), np.float32)
        label = np.full((batch_size, height, width), 255, np.int32)
        sizes = np.zeros((batch_size, 2), np.int32)
        for i, r in enumerate(rows):
            if r >= 0:
                (h, w), example = source[r]["segmentation"].shape, source[r]
                image[i, :h, :w], label[i, :h, :w] = preprocess(example["image"]), example["segmentation"]
                sizes[i] = (h, w)
        names = [source[r]["file_name"] if r >= 0 else "" for r in rows]
        out.append(Batch(image, label, sizes, names, np.asarray(rows)))
    return out


class PixelModel(nn.Module):
    """Per-pixel logits that also depend on the column index (so a shifted image predicts differently)."""

    num_classes: int = N
    ramp: float = 0.05

    @nn.compact
    def __call__(self, x):
        cols = jnp.arange(x.shape[2], dtype=jnp.float32)[None, None, :, None]
        return nn.Dense(self.num_classes)(x / 50) + self.ramp * cols * jnp.linspace(-1, 1, self.num_classes)


def numpy_hist(labels, preds, n):
    labels, preds = np.asarray(labels).ravel(), np.asarray(preds).ravel()
    k = (labels >= 0) & (labels < n)
    return np.bincount(n * labels[k].astype(int) + preds[k], minlength=n * n).reshape(n, n)


SIZES = [(37, 45), (60, 33), (41, 64), (64, 50), (35, 40)]  # all in one 64x64 bucket at multiple 32


def test_eval_step_hist_equals_numpy_and_preds_are_argmax():
    model = create_model("fcn16s", N, width=1 / 16)
    variables = random_variables(model)
    batch = batches(make_examples(SIZES[:2]), 2, 32)[0]
    step = make_eval_step(model, N)
    hists, preds = step(put_replicated(variables["params"], make_mesh()), batch.image, batch.label)
    hist, preds = hists["out"], preds["out"]
    want_preds = np.asarray(jnp.argmax(model.apply(variables, batch.image), -1))
    assert len(np.unique(want_preds)) > 1  # a non-trivial prediction
    np.testing.assert_array_equal(np.asarray(preds), want_preds)
    np.testing.assert_array_equal(np.asarray(hist), numpy_hist(batch.label, want_preds, N))
    assert int(np.asarray(hist).sum()) == int(np.sum(np.asarray(batch.label) < N))  # padding never counted


@pytest.mark.parametrize("flip", [False, True])
def test_bucketing_and_padding_do_not_change_metrics(flip):
    model = PixelModel()
    variables = random_variables(model)
    source = make_examples(SIZES[:3])
    exact = evaluate(model, variables["params"], batches(source, 1, 1), N, flip=flip, progress=False)
    padded = evaluate(model, variables, batches(source, 2, 32), N, flip=flip, progress=False)
    assert exact.num_images == padded.num_images == len(source)
    np.testing.assert_array_equal(exact.hist, padded.hist)
    assert exact.scores["mean_iu"] == padded.scores["mean_iu"]
    predict = jax.jit(lambda v, x: jnp.argmax(class_scores(model, v, x, flip=flip)["out"], -1))
    want = sum(numpy_hist(e["segmentation"], predict(variables, preprocess(e["image"][None])), N) for e in source)
    np.testing.assert_array_equal(padded.hist, want)
    assert padded.hist.sum() == sum(int(np.sum(e["segmentation"] < N)) for e in source)


def test_flip_mirrors_each_image_within_its_width():
    x = jnp.arange(2 * 1 * 6, dtype=jnp.float32).reshape(2, 1, 6, 1)
    out = np.asarray(mirror(x, jnp.array([4, 0])))[..., 0]
    np.testing.assert_array_equal(out, [[[3, 2, 1, 0, 4, 5]], [[6, 7, 8, 9, 10, 11]]])
    np.testing.assert_array_equal(np.asarray(mirror(mirror(x, jnp.array([4, 0])), jnp.array([4, 0]))), x)
    # The flip pass averages the model's mirrored view: check against explicit NumPy flips.
    model = PixelModel()
    variables = random_variables(model, seed=3)
    image = preprocess(np.random.default_rng(4).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8))
    soft = lambda z: np.asarray(jax.jit(lambda v, z: jax.nn.softmax(model.apply(v, z), -1))(variables, z))  # noqa: E731
    want = (soft(image) + soft(image[:, :, ::-1])[:, :, ::-1]) / 2
    got = jax.jit(lambda v, x: class_scores(model, v, x, flip=True)["out"])(variables, image)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_multi_scale_averages_probabilities():
    model = PixelModel(ramp=0.0)  # per-pixel only: a constant image scores the same at every scale
    variables = random_variables(model, seed=5)
    image = jnp.full((1, 10, 14, 3), 20.0)
    out = np.asarray(jax.jit(lambda v, x: class_scores(model, v, x, flip=True, scales=(0.5, 1.0, 1.5))["out"])(
        variables, image))
    assert out.shape == (1, 10, 14, N)
    np.testing.assert_allclose(out.sum(-1), 1, rtol=1e-5)
    np.testing.assert_allclose(out, np.asarray(jax.nn.softmax(model.apply(variables, image), -1)), rtol=1e-5)
    fcn = create_model("fcn32s", N, width=1 / 16)
    out = jax.jit(lambda v, x: class_scores(fcn, v, x, scales=(0.5,))["out"])(random_variables(fcn),
                                                                              jnp.zeros((2, 21, 19, 3)))
    assert out.shape == (2, 21, 19, N)


def test_on_batch_callback_and_result_fields():
    model = PixelModel()
    variables = random_variables(model)
    calls = []

    def on_batch(batch, preds):
        calls.append((preds.shape, preds.dtype, list(batch.indices)))
        return False  # one is enough

    result = evaluate(model, variables, batches(make_examples(SIZES), 2, 32), N, on_batch=on_batch,
                      progress=False)
    assert calls == [((2, 64, 64), np.int32, [0, 1])]
    assert result.num_images == 5 and result.seconds > 0 and result.images_per_s > 0
    assert result.hist.dtype == np.int64 and set(result.scores) >= {"pixel_acc", "mean_acc", "mean_iu", "fw_iu"}
    assert result.scores["mean_iu"] == scores(result.hist)["mean_iu"]


SHARDED = """
import json, jax
from fcn_jax import create_model
from fcn_jax.evaluate import evaluate
from fcn_jax.parallel import make_mesh
from test_evaluate import N, SIZES, batches, make_examples, random_variables
assert jax.device_count() == 4, jax.devices()
model = create_model("fcn32s", N, width=1 / 16)
params = random_variables(model)["params"]
source = make_examples(SIZES, seed=7)
out = {}
for flip in (False, True):
    for n in (1, 4):
        r = evaluate(model, params, batches(source, 4, 32), N, mesh=make_mesh(jax.devices()[:n]), flip=flip,
                     progress=False)
        out[f"{flip}/{n}"] = [r.hist.tolist(), r.num_images]
try:
    evaluate(model, params, batches(source, 2, 32), N, progress=False)
except ValueError as e:
    out["error"] = str(e)
print("RESULT", json.dumps(out))
"""


def test_sharded_over_4_devices_equals_1_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    for flip in ("False", "True"):
        one, four = out[f"{flip}/1"], out[f"{flip}/4"]
        assert one[1] == four[1] == 5
        assert np.sum(one[0]) > 0
        np.testing.assert_array_equal(one[0], four[0])
    assert "multiple of the number of devices (4)" in out["error"]
