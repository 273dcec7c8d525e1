"""A bounded number of compiled programs alive: reference runs at hundreds of image sizes must not run the
process out of memory mappings (Linux's vm.max_map_count; XLA:CPU's JIT code lives in mappings)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import create_model, parallel, programs
from fcn_jax.config import ModelConfig
from fcn_jax.configs import get_config
from fcn_jax.data.pipeline import TrainInput, train_iterator
from fcn_jax.evaluator import Evaluator
from fcn_jax.preprocess import preprocess
from fcn_jax.train_lib import create_train_state, make_train_step
from test_evaluate import make_examples
from test_masked_buckets import numpy_hist, random_variables


def convs(x):
    for _ in range(3):
        x = jax.nn.relu(jax.lax.conv_general_dilated(x, jnp.ones((3, 3, 4, 4)), (1, 1), "SAME",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return x.sum(axis=(1, 2, 3))


def numpy_convs(x):
    """convs by a NumPy loop: 3x3 SAME convolution with all-ones weights over 4 channels, ReLU, x3."""
    for _ in range(3):
        p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = sum(p[:, i:i + x.shape[1], j:j + x.shape[2]].sum(-1, keepdims=True)
                  for i in range(3) for j in range(3))
        x = np.maximum(np.repeat(out, 4, axis=-1), 0)
    return x.sum(axis=(1, 2, 3))


def test_results_and_live_programs_over_more_shapes_than_the_limit():
    f = programs.bounded_jit(convs, limit=3)
    rng = np.random.default_rng(0)
    for h in [5, 6, 7, 8, 5, 9, 6, 10]:
        x = rng.standard_normal((2, h, 4, 4)).astype(np.float32)
        np.testing.assert_allclose(np.asarray(f(x)), numpy_convs(x.astype(np.float64)), rtol=1e-5)
        assert f.jitted._cache_size() <= 3
    assert f.clears == 2  # {5,6,7} -> clear at 8: {8,5,9} -> clear at 6: {6,10}
    assert f.lower(np.zeros((1, 4, 4, 4), np.float32)).compile()(np.ones((1, 4, 4, 4), np.float32)).shape == (1,)
    with pytest.raises(ValueError, match="at least one"):
        programs.bounded_jit(convs, limit=0)


def test_signature_counts_shapes_dtypes_and_static_flags():
    a, b = np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float16)
    sig = programs.signature
    assert sig((a, 1.0), {}) == sig((np.ones((2, 3), np.float32), 2.5), {})  # traced scalars: one program
    assert sig((a,), {}) != sig((b,), {}) != sig((a[:1],), {})
    assert sig((a, True), {}) != sig((a, False), {})  # static flags by value
    assert sig((a,), {}) != sig(({"x": a},), {})


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_memory_mappings_stay_bounded():
    """The crash's cause, measured: each live XLA:CPU program holds mappings; the bounded jit releases them."""
    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    def grown(fn):
        before = maps()
        for h in range(8, 32):
            fn(np.ones((1, h, 8, 4), np.float32)).block_until_ready()
        return maps() - before

    unbounded, bounded = grown(jax.jit(convs)), grown(programs.bounded_jit(convs, limit=2))
    assert unbounded >= 24 * 3, unbounded  # a few mappings per program, 24 programs
    assert bounded < unbounded / 4, (bounded, unbounded)


def test_reference_training_over_more_sizes_than_the_limit(monkeypatch):
    """make_train_step keeps at most LIVE_PROGRAMS image sizes compiled, and a run whose programs were
    cleared between steps gives the states of a run that kept them all (each step's own-size jit)."""
    monkeypatch.setattr(programs, "LIVE_PROGRAMS", 2)
    model_cfg = ModelConfig(variant="fcn32s", num_classes=3, width=1 / 16, dropout_rate=0.0)
    cfg = get_config("reference", "fcn32s", model=model_cfg, lr=1e-3)
    source = make_examples([(20, 24), (22, 18), (26, 20), (20, 24)], num_classes=3, seed=1)
    mesh = parallel.make_mesh(jax.devices()[:1])
    params = random_variables(model_cfg.build(), seed=2)["params"]
    inputs = TrainInput(mode="reference", batch_size=1, convention="caffe", sampling="epoch", seed=0)
    with train_iterator(source, inputs, num_threads=1) as it:
        batches = [jax.device_get(next(it)) for _ in range(len(source))]

    def run(step):
        state = jax.device_put(create_train_state(cfg, model_cfg.build(), jax.tree.map(jnp.copy, params)),
                               parallel.replicated(mesh))
        for batch in batches:
            state, _ = step(state, batch)
        return jax.device_get(state.params)

    step = make_train_step(cfg, mesh)
    bounded = run(step)
    assert step.jitted._cache_size() <= 2 and step.clears >= 1
    monkeypatch.setattr(programs, "LIVE_PROGRAMS", 100)
    kept = run(make_train_step(cfg, mesh))
    for got, want in zip(jax.tree.leaves(bounded), jax.tree.leaves(kept)):
        np.testing.assert_array_equal(got, want)


def test_exact_size_evaluation_keeps_few_programs(monkeypatch):
    """Exact-size evaluation of more sizes than LIVE_PROGRAMS: its step is cleared on the way, and the
    confusion matrix is still the per-image model.apply's."""
    made = []
    init = programs.BoundedJit.__init__

    def record(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(programs, "LIVE_PROGRAMS", 2)
    monkeypatch.setattr(programs.BoundedJit, "__init__", record)
    model = create_model("fcn32s", 3, width=1 / 16)
    variables = random_variables(model, seed=3)
    sizes = [(20, 24), (22, 18), (26, 20), (18, 30), (20, 24)]
    source = make_examples(sizes, num_classes=3, seed=5)
    from fcn_jax import evaluate
    evaluate._compiled_step.cache_clear()  # a step cached by an earlier test was made with the old limit
    result = Evaluator(model, source, batch_size=1)(variables, progress=False)
    assert made and all(f.limit == 2 for f in made) and any(f.clears for f in made)
    apply = jax.jit(lambda v, x: model.apply(v, x))
    want = [np.asarray(apply(variables, preprocess(e["image"][None])))[0].argmax(-1) for e in source]
    np.testing.assert_array_equal(result.hist, sum(numpy_hist(e["segmentation"], p, 3)
                                                   for e, p in zip(source, want)))
