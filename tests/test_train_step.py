"""The train step against hand-computed solver updates, and exact data parallelism."""
import json
import os
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import parallel
from fcn_jax.config import ModelConfig
from fcn_jax.configs import get_config
from fcn_jax.train_lib import create_train_state, make_train_step, param_labels, pixel_cross_entropy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(variant="fcn16s", freeze="final", **overrides):
    model = ModelConfig(variant=variant, num_classes=3, width=1 / 16, dropout_rate=0.0, freeze_upsamplers=freeze)
    return get_config("reference", variant, model=model, **overrides)


def random_params(model, seed=0):
    """Random params with every layer random and well scaled (score layers are zero at init, which hides
    gradients), drawn from the parameter shapes: no init program to compile."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) == 1:  # biases
            return jnp.asarray(0.05 * rng.standard_normal(s.shape), jnp.float32)
        return jnp.asarray(rng.standard_normal(s.shape) * np.sqrt(2 / np.prod(s.shape[:-1])), jnp.float32)

    return jax.tree.map(fill, shapes)


def batch(seed=0, n=1, h=13, w=11, void_fraction=0.3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, (n, h, w))
    labels[rng.random((n, h, w)) < void_fraction] = 255
    return {"image": jnp.asarray(rng.standard_normal((n, h, w, 3)) * 50, jnp.float32),
            "label": jnp.asarray(labels, jnp.int32)}


def test_pixel_cross_entropy_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 5, 4))
    labels[0, 0, :] = 255
    total, count = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    valid = labels != 255
    expected = -sum(logp[idx + (labels[idx],)] for idx in zip(*np.nonzero(valid)))
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    assert float(count) == valid.sum()


def test_reference_solver_update_by_hand():
    """Two steps of the reference solver: summed loss over non-void pixels, SGD momentum 0.99, weight
    decay on weights only, biases at 2x lr, final upsampler frozen."""
    cfg = tiny_config("fcn16s", lr=1e-6)  # a visible lr; the rule is what is tested
    model = cfg.model.build()
    params0 = random_params(model)
    mesh = parallel.make_mesh(jax.devices()[:1])
    # placed as the training loop places it: the step counter an array from the start, so the second
    # step reuses the first step's program
    state = jax.device_put(create_train_state(cfg, model, jax.tree.map(jnp.copy, params0)), parallel.replicated(mesh))
    step = make_train_step(cfg, mesh)
    b1, b2 = batch(1), batch(2)

    @jax.jit  # one compiled program for both steps (op-by-op autodiff of the net compiles every op)
    @jax.value_and_grad
    def summed_loss(p, b):
        logits = model.apply({"params": p}, b["image"])
        return pixel_cross_entropy(logits, b["label"])[0]

    labels = param_labels(params0, cfg.model)
    lr, mom, wd = np.float32(1e-6), np.float32(0.99), np.float32(5e-4)

    def hand_update(p, v, g):  # in NumPy, leaf by leaf
        def one(label, p_, v_, g_):
            if label == "frozen":
                return p_, v_
            if label == "bias":
                v_new = mom * v_ + 2 * lr * g_
            else:
                v_new = mom * v_ + lr * (g_ + wd * p_)
            return p_ - v_new, v_new
        out = jax.tree.map(one, labels, p, v, g)
        return (jax.tree.map(lambda t: t[0], out, is_leaf=lambda t: isinstance(t, tuple)),
                jax.tree.map(lambda t: t[1], out, is_leaf=lambda t: isinstance(t, tuple)))

    p = jax.tree.map(np.asarray, params0)
    v = jax.tree.map(np.zeros_like, p)
    for b in (b1, b2):
        loss_expected, grads = summed_loss(p, b)
        p, v = hand_update(p, v, jax.tree.map(np.asarray, grads))
        state, metrics = step(state, b)
        np.testing.assert_allclose(float(metrics["loss"]), float(loss_expected), rtol=1e-5)
    # compare the updates (params - initial params), which is where the solver's rule shows
    for (path, a), e, a0 in zip(jax.tree_util.tree_leaves_with_path(state.params), jax.tree.leaves(p),
                                jax.tree.leaves(params0)):
        delta, expected = np.asarray(a) - np.asarray(a0), np.asarray(e) - np.asarray(a0)
        np.testing.assert_allclose(delta, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max() + 1e-12,
                                   err_msg=jax.tree_util.keystr(path))
    # the frozen final upsampler is bit-identical; the learned intermediate one moved
    np.testing.assert_array_equal(np.asarray(state.params["upscore16"]["kernel"]),
                                  np.asarray(params0["upscore16"]["kernel"]))
    assert not np.array_equal(np.asarray(state.params["upscore2"]["kernel"]), np.asarray(params0["upscore2"]["kernel"]))


@pytest.mark.parametrize("freeze,expect_frozen", [("all", {"upscore2", "upscore16"}), ("none", set())])
def test_freeze_options(freeze, expect_frozen):
    cfg = tiny_config("fcn16s", freeze=freeze, lr=1e-6)
    model = cfg.model.build()
    params0 = random_params(model)
    state = create_train_state(cfg, model, jax.tree.map(jnp.copy, params0))
    state, _ = make_train_step(cfg, parallel.make_mesh(jax.devices()[:1]))(state, batch(3))
    for name in ("upscore2", "upscore16"):
        same = np.array_equal(np.asarray(state.params[name]["kernel"]), np.asarray(params0[name]["kernel"]))
        assert same == (name in expect_frozen), name


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_gradient_accumulation_equals_full_batch(loss):
    cfg1 = tiny_config("fcn32s", lr=1e-4, loss=loss, batch_size=4)
    cfg2 = tiny_config("fcn32s", lr=1e-4, loss=loss, batch_size=4, grad_accum=2)
    model = cfg1.model.build()
    params0 = random_params(model, seed=4)
    mesh = parallel.make_mesh(jax.devices()[:1])
    b = batch(5, n=4, void_fraction=0.5)
    s1, m1 = make_train_step(cfg1, mesh)(create_train_state(cfg1, model, jax.tree.map(jnp.copy, params0)), b)
    s2, m2 = make_train_step(cfg2, mesh)(create_train_state(cfg2, model, jax.tree.map(jnp.copy, params0)), b)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    for a, e in zip(jax.tree.leaves(s2.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)


DP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {repo!r})
    from fcn_jax import parallel
    from fcn_jax.config import ModelConfig
    from fcn_jax.configs import get_config
    from fcn_jax.train_lib import create_train_state, make_train_step
    assert len(jax.devices()) == 4
    model_cfg = ModelConfig("fcn8s", 3, 1 / 16, dropout_rate=0.0)
    cfg = get_config("modern", "fcn8s", model=dict(model_cfg.__dict__, dtype="float32"), batch_size=4, lr=1e-3)
    model = cfg.model.build()
    # random, well-scaled params with every layer non-zero, from the shapes (no init program to compile)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    init_rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (init_rng.standard_normal(s.shape) * (
        0.05 if len(s.shape) == 1 else np.sqrt(2 / np.prod(s.shape[:-1])))).astype(np.float32), shapes)
    out = {{}}
    for n in (1, 4):  # both device counts in one process
        mesh = parallel.make_mesh(jax.devices()[:n])
        state = jax.device_put(create_train_state(cfg, model, params), parallel.replicated(mesh))
        step = make_train_step(cfg, mesh)
        rng = np.random.default_rng(0)
        losses = []
        for i in range(3):
            labels = rng.integers(0, 3, (4, 19, 17)); labels[rng.random(labels.shape) < 0.3] = 255
            b = {{"image": rng.standard_normal((4, 19, 17, 3)).astype(np.float32) * 50, "label": labels.astype(np.int32)}}
            b = jax.device_put(b, parallel.data_sharding(mesh))
            state, m = step(state, b)
            losses.append(float(m["loss"]))
        out[n] = {{"losses": losses, "params": [np.asarray(x).ravel()[:50].tolist() for x in jax.tree.leaves(state.params)]}}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module", autouse=True)
def data_parallel_run(early_runs, tmp_path_factory):
    """Starts the 4-device process of ``test_data_parallel_is_exact_on_4_devices`` (when selected) with the
    module's first test: it waits for no other test, and compiles while the tests before it do."""
    if early_runs.selected("test_data_parallel_is_exact_on_4_devices"):
        script = tmp_path_factory.mktemp("data_parallel") / "dp.py"
        script.write_text(DP_SCRIPT.format(repo=REPO))
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
        early_runs.start("dp", [sys.executable, str(script)], env=env)


def test_data_parallel_is_exact_on_4_devices(early_runs):
    code, stdout, stderr = early_runs.result("dp", 600)
    assert code == 0, stderr[-3000:]
    outs = {int(n): v for n, v in json.loads(stdout.strip().splitlines()[-1]).items()}
    np.testing.assert_allclose(outs[4]["losses"], outs[1]["losses"], rtol=1e-5)
    for a, b in zip(outs[4]["params"], outs[1]["params"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
