"""Masked buckets: images of several sizes padded into one canvas give exactly what each gives alone.

The reference for every check is the own-size computation: ``model.apply`` on each image alone at its own
size (evaluation), or the train step on a batch of that one image at its own size (training). Canvases are
filled beyond the images with large non-zero values, so nothing passes by the filler happening to be zero.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import create_model, parallel
from fcn_jax.config import ModelConfig
from fcn_jax.configs import get_config
from fcn_jax.data.pipeline import TrainInput, train_iterator
from fcn_jax.evaluator import Evaluator
from fcn_jax.models import input_shape, maskable
from fcn_jax.train_lib import create_train_state, make_train_step
from test_evaluate import make_examples

N = 4
# several sizes per canvas, odd and even, tall and wide; the canvas is 64x64
IMAGE_SIZES = [(37, 53), (64, 29), (21, 40), (50, 64)]
CANVAS = (64, 64)


def random_variables(model, seed=0):
    """Random, well-scaled values for every parameter (score layers and biases included, which init
    zeroes), from the shapes alone."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(input_shape(model.variant)))
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) == 1:
            return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
        return (rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))).astype(np.float32)

    return jax.tree.map(fill, shapes)


def canvas(images, shape=CANVAS, filler=7.0):
    """Images (h, w, C) top-left in a (B, H, W, C) canvas of ``filler``; and their (B, 2) sizes."""
    out = np.full((len(images), *shape, images[0].shape[-1]), filler, np.float32)
    for row, image in enumerate(images):
        out[row, :image.shape[0], :image.shape[1]] = image
    return out, np.asarray([image.shape[:2] for image in images], np.int32)


def assert_own_size(got, want, size):
    """``got`` (H, W, C) canvas logits: ``want`` (h, w, C) inside (1e-5 of its scale, same argmax), 0 beyond."""
    h, w = size
    inside = got[:h, :w]
    np.testing.assert_allclose(inside, want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(inside.argmax(-1), want.argmax(-1))
    outside = got.copy()
    outside[:h, :w] = 0
    assert not outside.any()


@pytest.mark.parametrize("variant,options", [
    ("fcn32s", {}), ("fcn16s", {}), ("fcn8s", {}), ("fcn8s-atonce", {}), ("fcn8s", {"padding": "same"}),
    ("siftflow-fcn16s", {}), ("nyud-fcn32s-color-hha", {}), ("fcn-alexnet", {}), ("fcn-googlenet", {}),
])
def test_padded_batch_equals_each_image_alone(variant, options):
    model = create_model(variant, N, width=1 / 16, **options)
    variables = random_variables(model)
    channels = input_shape(variant)[-1]
    rng = np.random.default_rng(1)
    images = [(40 * rng.standard_normal((h, w, channels))).astype(np.float32) for h, w in IMAGE_SIZES]
    x, sizes = canvas(images)
    apply = jax.jit(lambda v, x, s=None: model.apply(v, x, return_dict=True, sizes=s))
    masked = apply(variables, x, sizes)
    plain = apply(variables, x)
    for row, image in enumerate(images):
        alone = apply(variables, image[None])
        for name in alone:
            assert_own_size(np.asarray(masked[name][row]), np.asarray(alone[name][0]), IMAGE_SIZES[row])
    # without the masks the same canvas differs from the own-size logits (what bucketing did before: the
    # filler reaches the outputs through every conv's pad, conv1_1's pad of 100 and the ceil-mode pools)
    diffs = [np.abs(np.asarray(plain[name][row, :h, :w]) - np.asarray(alone[name][0])).max()
             / np.abs(np.asarray(alone[name])).max()
             for row, (h, w) in enumerate(IMAGE_SIZES) for alone in [apply(variables, images[row][None])]
             for name in alone]
    assert max(diffs) > 1e-2


def test_batchnorm_and_resized_networks_refuse_sizes():
    assert [v for v in ("fcn-vgg11bn", "fcn-resnet50", "fcn-resnet101") if maskable(v)] == []
    model = create_model("fcn-resnet50", N, width=1 / 16)
    with pytest.raises(ValueError, match="fcn-resnet50 cannot run images of several sizes"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
                                          sizes=jnp.asarray([[32, 32]])))


def numpy_hist(label, pred, n=N):
    label, pred = np.asarray(label).ravel().astype(int), np.asarray(pred).ravel().astype(int)
    keep = label < n
    return np.bincount(n * label[keep] + pred[keep], minlength=n * n).reshape(n, n)


@pytest.mark.parametrize("flip", [False, True])
def test_bucketed_evaluation_equals_exact_size(flip):
    """The evaluator's padded buckets (batch 2, images of several sizes per batch) predict and score as the
    exact-size plan and as per-image ``model.apply`` at each own size."""
    model = create_model("fcn8s", N, width=1 / 16)
    variables = random_variables(model, seed=2)
    sizes = [(37, 53), (53, 37), (29, 47), (41, 41), (37, 53), (60, 20)]
    source = make_examples(sizes, num_classes=N, seed=3)

    def run(bucket):
        got = {}

        def keep(batch, preds):
            for row, index in enumerate(batch.indices):
                if index >= 0:
                    h, w = batch.sizes[row]
                    got[int(index)] = preds[row, :h, :w]

        evaluator = Evaluator(model, source, batch_size=2, bucket_multiple=bucket, flip=flip)
        return evaluator, evaluator(variables, pictures=keep, progress=False), got

    exact_eval, exact, exact_preds = run(None)
    bucket_eval, bucketed, bucket_preds = run(32)
    assert bucket_eval.masked and not exact_eval.masked
    np.testing.assert_array_equal(bucketed.hist, exact.hist)
    for i in range(len(sizes)):
        np.testing.assert_array_equal(bucket_preds[i], exact_preds[i])
    if not flip:  # and both are the per-image apply's
        from fcn_jax.preprocess import preprocess
        apply = jax.jit(lambda v, x: model.apply(v, x))
        want = [np.asarray(apply(variables, preprocess(e["image"][None])))[0].argmax(-1) for e in source]
        np.testing.assert_array_equal(bucketed.hist, sum(numpy_hist(e["segmentation"], p)
                                                         for e, p in zip(source, want)))
        assert len(np.unique(np.concatenate([p.ravel() for p in want]))) > 1  # a non-trivial prediction


def tree_close(got, want, rtol=1e-5):
    """Every leaf of ``got`` within ``rtol`` of ``want``'s scale (max |want| of that leaf)."""
    for path, (g, w) in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                            zip(jax.tree.leaves(got), jax.tree.leaves(want))):
        g, w = np.asarray(g), np.asarray(w)
        np.testing.assert_allclose(g, w, rtol=0, atol=rtol * max(np.abs(w).max(), 1e-30),
                                   err_msg=jax.tree_util.keystr(path[0]))


def test_reference_train_step_on_padded_images_equals_own_size_steps():
    """Reference mode, one step (lr large enough that the update is not lost in float32 rounding of the parameters; dropout off, since its masks are drawn
    for the map's shape): a padded batch of two images of different sizes updates the parameters by the
    mean of the two own-size steps' updates (Caffe's loss is summed over the image's pixels / batch), and a
    padded batch of one image exactly as the own-size step."""
    model_cfg = ModelConfig(variant="fcn16s", num_classes=3, width=1 / 16, dropout_rate=0.0)
    sizes = [(37, 45), (29, 60)]
    source = make_examples(sizes, num_classes=3, seed=4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    params = random_variables(model_cfg.build(), seed=5)["params"]

    def delta(cfg, batch):
        state = jax.device_put(create_train_state(cfg, cfg.model.build(), jax.tree.map(jnp.copy, params)),
                               parallel.replicated(mesh))
        new, metrics = make_train_step(cfg, mesh)(state, batch)
        assert bool(metrics["finite"])
        return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new.params, params), float(metrics["loss"])

    def batches(batch_size, bucket, examples):
        inputs = TrainInput(mode="reference", batch_size=batch_size, bucket_multiple=bucket, convention="caffe")
        with train_iterator(examples, inputs, num_threads=1) as it:
            return next(it)

    own_cfg = get_config("reference", "fcn16s", model=model_cfg, lr=1e-3)
    own = [delta(own_cfg, batches(1, None, [e])) for e in source]
    padded_cfg = get_config("reference", "fcn16s", model=model_cfg, lr=1e-3, batch_size=2, bucket_multiple=64)
    two = batches(2, 64, source)
    assert two["image"].shape[1:3] == (64, 64) and sorted(two["sizes"].tolist()) == sorted(map(list, sizes))
    got, loss = delta(padded_cfg, two)
    tree_close(got, jax.tree.map(lambda a, b: (a + b) / 2, own[0][0], own[1][0]))
    np.testing.assert_allclose(loss, (own[0][1] + own[1][1]) / 2, rtol=1e-5)
    one_cfg = get_config("reference", "fcn16s", model=model_cfg, lr=1e-3, batch_size=1, bucket_multiple=64)
    got, loss = delta(one_cfg, batches(1, 64, source[1:]))
    tree_close(got, own[1][0])
    np.testing.assert_allclose(loss, own[1][1], rtol=1e-5)
