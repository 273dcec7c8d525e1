"""The training protocol against the Caffe reference's own formulas (REFERENCE.md, "Training as in the
reference"): SGD as sgd_solver.cpp computes it, SoftmaxWithLoss normalisation, every upsampler fixed,
solve.py's re-filling of upsamplers after stage initialisation, and training only some layers."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import checkpoint, parallel
from fcn_jax.config import ModelConfig
from fcn_jax.configs import get_config
from fcn_jax.models import bilinear_init
from fcn_jax.train_lib import create_train_state, initial_variables_for, make_train_step

MODEL = dict(num_classes=3, width=1 / 16, dropout_rate=0.0)


def random_params(model, seed=0):
    """Every layer random, He-scaled (score layers are zero at init, which would hide their gradients);
    drawn with NumPy on the shapes from ``jax.eval_shape``, so nothing compiles."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1]))
                                   ).astype(np.float32), shapes)


def images(seed, n, h=13, w=11):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (n, h, w))
    labels[rng.random((n, h, w)) < 0.3] = 255
    return {"image": jnp.asarray(rng.standard_normal((n, h, w, 3)) * 50, jnp.float32),
            "label": jnp.asarray(labels, jnp.int32)}


@functools.lru_cache(maxsize=None)
def _value_and_grad(loss_sum, n):
    """The compiled (loss_sum / n, its gradient): compiled once per loss, not once per iteration group."""
    return jax.jit(jax.value_and_grad(lambda p, b: loss_sum(p, b) / n))


def caffe_sgd(params, history, batch, *, loss_sum, n, iter_size, lr, momentum, wd, lr_mult, decay_mult):
    """One Caffe iteration group as sgd_solver.cpp computes it: ``iter_size`` forward/backward passes of
    ``n`` images each, SoftmaxWithLoss with ``normalize: false`` (the summed loss divided by n), the
    accumulated diff divided by iter_size, then per blob
    ``history = momentum * history + lr * lr_mult * (diff + wd * decay_mult * w); w -= history``."""
    diff = jax.tree.map(jnp.zeros_like, params)
    loss = 0.0
    forward_backward = _value_and_grad(loss_sum, n)
    for k in range(iter_size):
        part = {key: v[k * n:(k + 1) * n] for key, v in batch.items()}
        value, g = forward_backward(params, part)
        diff, loss = jax.tree.map(jnp.add, diff, g), loss + float(value)
    diff = jax.tree.map(lambda d: d / iter_size, diff)
    history = jax.tree.map(lambda h, d, w, lm, dm: momentum * h + lr * lm * (d + wd * dm * w),
                           history, diff, params, lr_mult, decay_mult)
    return jax.tree.map(jnp.subtract, params, history), history, loss / iter_size


def test_reference_step_is_caffes_sgd():
    """Two steps of the `reference` config against sgd_solver.cpp's formula with batch N = 2 and
    iter_size 2: loss = sum / N averaged over iter_size, biases lr_mult 2 / decay_mult 0, every upsampler
    lr_mult 0. (At the reference's batch 1 and iter_size 1 the loss is the plain sum.)"""
    batch_size, iter_size = 4, 2
    lr = 1e-6  # a visible learning rate; the rule is what is tested
    cfg = get_config("reference", "fcn16s", model=MODEL, lr=lr, batch_size=batch_size, grad_accum=iter_size)
    assert cfg.model.freeze_upsamplers == "all" and (cfg.momentum, cfg.weight_decay, cfg.bias_lr_mult) == (0.99, 5e-4, 2)
    model = cfg.model.build()
    params0 = random_params(model)
    state = create_train_state(cfg, model, jax.tree.map(jnp.copy, params0))
    step = make_train_step(cfg, parallel.make_mesh(jax.devices()[:1]))

    def loss_sum(p, b):
        logits = model.apply({"params": p}, b["image"])
        logp = jax.nn.log_softmax(logits, -1)
        valid = b["label"] != 255
        picked = jnp.take_along_axis(logp, jnp.where(valid, b["label"], 0)[..., None], -1)[..., 0]
        return -jnp.sum(jnp.where(valid, picked, 0.0))

    def mult(path, _):
        names = [k.key for k in path]
        if names[0].startswith("upscore"):
            return 0.0, 0.0
        return (2.0, 0.0) if names[-1] == "bias" else (1.0, 1.0)

    mults = jax.tree_util.tree_map_with_path(mult, params0)
    lr_mult = jax.tree.map(lambda m: m[0], mults, is_leaf=lambda m: isinstance(m, tuple))
    decay_mult = jax.tree.map(lambda m: m[1], mults, is_leaf=lambda m: isinstance(m, tuple))
    p, h = params0, jax.tree.map(jnp.zeros_like, params0)
    n = batch_size // iter_size
    for seed in (1, 2):
        b = images(seed, batch_size)
        p, h, caffe_loss = caffe_sgd(p, h, b, loss_sum=loss_sum, n=n, iter_size=iter_size, lr=lr, momentum=0.99,
                                     wd=5e-4, lr_mult=lr_mult, decay_mult=decay_mult)
        state, metrics = step(state, b)
        np.testing.assert_allclose(float(metrics["loss"]), caffe_loss, rtol=1e-5)
    for (path, a), e, a0 in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(p),
                                jax.tree.leaves(params0)):
        delta, expected = np.asarray(a) - np.asarray(a0), np.asarray(e) - np.asarray(a0)
        # float32 sums in another order (micro-batches strided here, contiguous in Caffe): a few elements
        # differ at 1e-4 of the leaf's largest update; a wrong normalisation would be off by 50-100%
        np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max() + 1e-12,
                                   err_msg=jax.tree_util.keystr(path))
    for name in ("upscore2", "upscore16"):  # every upsampler is bit-identical: fixed, as in the reference
        np.testing.assert_array_equal(np.asarray(state.params[name]["kernel"]), np.asarray(params0[name]["kernel"]))


def test_stage_init_refills_fixed_upsamplers(tmp_path):
    """solve.py: after copying the previous stage, every fixed 'up*' layer is re-filled with the bilinear
    kernel; learned upsamplers (the paper's variant, freeze 'none') are copied like any layer."""
    source_cfg = ModelConfig("fcn16s", **MODEL)
    source = jax.tree.map(np.asarray, random_params(source_cfg.build(), seed=3))  # upsamplers not bilinear
    checkpoint.save_model(str(tmp_path / "fcn16s"), {"params": source},
                          checkpoint.model_meta(source_cfg, ["a", "b", "c"], "caffe"))
    bilinear = lambda layer: np.asarray(bilinear_init(None, layer["kernel"].shape))  # noqa: E731
    for freeze in ("all", "none"):
        cfg = get_config("reference", "fcn8s", model={**MODEL, "freeze_upsamplers": freeze},
                         init=str(tmp_path / "fcn16s"))
        variables, convention = initial_variables_for(cfg, cfg.model.build())
        params = variables["params"]
        assert convention == "caffe"
        for name in ("backbone", "score_fr", "score_pool4"):
            jax.tree.map(np.testing.assert_array_equal, jax.device_get(params[name]), source[name])
        if freeze == "all":
            for name in ("upscore2", "upscore_pool4", "upscore8"):
                np.testing.assert_array_equal(np.asarray(params[name]["kernel"]), bilinear(params[name]))
        else:
            np.testing.assert_array_equal(np.asarray(params["upscore2"]["kernel"]), source["upscore2"]["kernel"])
        np.testing.assert_array_equal(np.asarray(params["score_pool3"]["kernel"]), 0)  # new: zero-initialised


def test_only_the_classifier_trains_in_fcn32s_fixed():
    """The paper's FCN-32s-fixed (`reference_fixed`): after a step with a large learning rate every
    parameter but score_fr is bit-identical (outside the optimiser and its weight decay); `--frozen`
    says the same thing the other way round; a pattern that matches nothing is an error."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    for overrides in ({}, {"preset": "reference", "frozen": "(backbone|upscore)/.*"}):
        name = overrides.pop("preset", "reference_fixed")
        cfg = get_config(name, "fcn32s", model=MODEL, lr=1e-3, **overrides)
        model = cfg.model.build()
        params0 = jax.device_get(random_params(model, seed=5))
        state, _ = make_train_step(cfg, mesh)(create_train_state(cfg, model, jax.tree.map(jnp.copy, params0)),
                                              images(6, 1))
        after = jax.device_get(state.params)
        jax.tree.map(np.testing.assert_array_equal, after["backbone"], params0["backbone"])
        np.testing.assert_array_equal(after["upscore"]["kernel"], params0["upscore"]["kernel"])
        assert not np.array_equal(after["score_fr"]["kernel"], params0["score_fr"]["kernel"])
        assert not np.array_equal(after["score_fr"]["bias"], params0["score_fr"]["bias"])
    cfg = get_config("reference", "fcn32s", model=MODEL, trainable="score_pool4/.*")
    with pytest.raises(ValueError, match="--trainable 'score_pool4/.\\*' matches no parameter"):
        create_train_state(cfg, cfg.model.build(), params0)
