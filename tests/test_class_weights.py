"""Class-weighted loss: the weighted cross-entropy, median-frequency weights, and how weights are given."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import parallel
from fcn_jax.config import ModelConfig
from fcn_jax.configs import get_config
from fcn_jax.train_lib import (create_train_state, make_train_step, median_frequency_weights, pixel_cross_entropy,
                               resolve_class_weights)


def _numpy_weighted_ce(logits: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """Sum over labelled pixels of w[y] * -log softmax(logits)[y], and the sum of w[y], by a plain loop."""
    total, norm = 0.0, 0.0
    for idx in np.ndindex(labels.shape):
        y = int(labels[idx])
        if y >= logits.shape[-1]:
            continue
        z = logits[idx].astype(np.float64)
        total += weights[y] * -(z[y] - np.log(np.exp(z - z.max()).sum()) - z.max())
        norm += weights[y]
    return total, norm


def test_weighted_cross_entropy_matches_a_loop():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 4, 3)).astype(np.float32) * 3
    labels = rng.integers(0, 3, (2, 5, 4))
    labels[0, 1] = 255
    weights = np.array([0.25, 2.0, 5.0], np.float32)
    total, norm = pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    expected_total, expected_norm = _numpy_weighted_ce(logits, labels, weights)
    np.testing.assert_allclose(float(total), expected_total, rtol=1e-5)
    np.testing.assert_allclose(float(norm), expected_norm, rtol=1e-6)


def test_median_frequency_weights_by_hand():
    # frequencies 100/175, 50/175, absent, 25/175: median of the present ones is 50/175
    np.testing.assert_allclose(median_frequency_weights(np.array([100, 50, 0, 25])), [0.5, 1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="no labelled pixels"):
        median_frequency_weights(np.zeros(3))


def _cfg(**overrides):
    model = ModelConfig(variant="fcn32s", num_classes=3, width=1 / 16, dropout_rate=0.0)
    return get_config("shapes", "fcn32s", model=model, **overrides)


def test_class_weights_are_resolved_to_numbers_in_the_config(tmp_path):
    counts = lambda: np.array([600, 200, 100])  # noqa: E731
    assert resolve_class_weights(_cfg(class_weights="frequency"), counts).class_weights == "0.333333,1,2"
    path = tmp_path / "weights.txt"
    path.write_text("1\n2.5\n0\n")
    assert resolve_class_weights(_cfg(class_weights=str(path)), counts).class_weights == "1,2.5,0"
    assert resolve_class_weights(_cfg(class_weights="1, 2, 3"), counts).class_weights == "1, 2, 3"
    path.write_text("1 2\n")
    with pytest.raises(ValueError, match=f"--class-weights {path}: 2 weights for 3 classes"):
        resolve_class_weights(_cfg(class_weights=str(path)), counts)
    with pytest.raises(ValueError, match="--class-weights .*missing.txt: cannot read"):
        resolve_class_weights(_cfg(class_weights=str(tmp_path / "missing.txt")), counts)
    with pytest.raises(ValueError, match="class_weights: 2 weights for 3 classes"):
        _cfg(class_weights="1,2")
    with pytest.raises(ValueError, match="not all zero"):
        _cfg(class_weights="0,0,0")


def test_weighted_mean_loss_in_the_train_step():
    """The step's 'mean' loss with class weights is sum(w[y] * ce) / sum(w[y]) over labelled pixels."""
    cfg = _cfg(class_weights="0.5,1,4", loss="mean", lr=0.0, batch_size=2, warmup_steps=0)
    model = cfg.model.build()
    rng = np.random.default_rng(1)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    params = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape) * 0.3, jnp.float32), shapes)
    labels = rng.integers(0, 3, (2, 12, 10))
    labels[1, :4] = 255
    batch = {"image": jnp.asarray(rng.standard_normal((2, 12, 10, 3)), jnp.float32),
             "label": jnp.asarray(labels, jnp.int32)}
    logits = np.asarray(jax.jit(model.apply)({"params": params}, batch["image"]))  # before the step donates params
    mesh = parallel.make_mesh(jax.devices()[:1])
    _, metrics = make_train_step(cfg, mesh)(create_train_state(cfg, model, params), batch)
    total, norm = _numpy_weighted_ce(logits, labels, np.array([0.5, 1.0, 4.0]))
    np.testing.assert_allclose(float(metrics["loss"]), total / norm, rtol=1e-4)


def _write_folder(root, values):
    """A folder dataset of 10 16x16 images whose grayscale masks hold ``values`` (one per mask, cycled)."""
    from PIL import Image
    rng = np.random.RandomState(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(10):
        Image.fromarray(rng.randint(0, 255, (16, 16, 3), np.uint8)).save(root / "images" / f"{i}.png")
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = values[i % len(values)]
        mask[0, 0] = max(values)  # every mask holds the largest value: the split decides nothing
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    return f"folder:{root}"


@pytest.mark.parametrize("values, binary, given", [((1, 2), False, "1,5,2"), ((255,), True, "1,5")])
def test_class_weights_are_checked_against_the_datasets_classes(tmp_path, values, binary, given):
    """A folder defines the class count (3 classes; binary masks: 2): weights for that many are accepted
    whatever the preset's count (7), others refused naming the dataset's count (issue 24, item 9)."""
    from fcn_jax.cli import UsageError
    from fcn_jax.cli import train as train_cli
    dataset = _write_folder(tmp_path / "data", values)
    flags = ["--dataset", dataset, "--no-progress"] + (["--binary-masks"] if binary else [])
    cfg = train_cli.build_config(train_cli.build_parser().parse_args(flags + ["--class-weights", given]))
    assert cfg.model.num_classes == len(given.split(",")) != get_config("shapes").model.num_classes
    assert cfg.class_weights == given
    wrong = ",".join(["1"] * (len(given.split(",")) + 1))
    with pytest.raises(UsageError, match=f"{len(given.split(',')) + 1} weights for {len(given.split(','))} classes"):
        train_cli.build_config(train_cli.build_parser().parse_args(flags + ["--class-weights", wrong]))
