"""Metrics against an independent per-class re-derivation of the reference's score.py and a hand-worked case."""
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import metrics
from fcn_jax.metrics import ConfusionAccumulator, confusion_matrix, format_table, scores


def per_class_reference(gt, pred, n):
    """score.py's four numbers re-derived from pixel sets, class by class, without a confusion matrix."""
    valid = (gt >= 0) & (gt < n)
    tp = np.array([np.sum(valid & (gt == c) & (pred == c)) for c in range(n)], np.float64)
    in_gt = np.array([np.sum(valid & (gt == c)) for c in range(n)], np.float64)
    in_pred = np.array([np.sum(valid & (pred == c)) for c in range(n)], np.float64)
    union = in_gt + in_pred - tp
    iu = np.array([tp[c] / union[c] if union[c] else math.nan for c in range(n)])
    acc = [tp[c] / in_gt[c] for c in range(n) if in_gt[c]]
    total = valid.sum()
    return {
        "pixel_acc": tp.sum() / total,
        "mean_acc": sum(acc) / len(acc),
        "mean_iu": np.mean([v for v in iu if not math.isnan(v)]),
        "fw_iu": sum(in_gt[c] / total * iu[c] for c in range(n) if in_gt[c]),
        "iu": iu,
    }


def test_random_predictions_with_void_and_absent_classes():
    n = 6
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (4, 37, 29))  # classes 3, 4, 5 absent from the ground truth
    gt[rng.random(gt.shape) < 0.2] = 255  # void
    gt[0, 0, :5] = [-1, 6, 7, 100, 254]  # outside 0..n-1: skipped too
    pred = rng.integers(0, 5, gt.shape)  # class 3, 4 predicted but absent; class 5 nowhere
    hist = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(jnp.asarray(gt), jnp.asarray(pred), n))
    got, want = scores(hist), per_class_reference(gt, pred, n)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert got[key] == pytest.approx(want[key], rel=1e-12), key
    np.testing.assert_allclose(got["iu"], want["iu"], rtol=1e-12)
    assert got["iu"][3] == 0 and got["iu"][4] == 0 and math.isnan(got["iu"][5])
    assert hist.sum() == np.sum((gt >= 0) & (gt < n))


def test_confusion_matrix_equals_numpy_bincount():
    n = 21
    rng = np.random.default_rng(1)
    gt = rng.integers(0, n, (3, 50, 40)).astype(np.uint8)
    gt[:, :7] = 255
    pred = rng.integers(0, n, gt.shape).astype(np.int32)
    k = gt < n  # score.py's fast_hist
    want = np.bincount(n * gt[k].astype(int) + pred[k], minlength=n * n).reshape(n, n)
    got = confusion_matrix(jnp.asarray(gt), jnp.asarray(pred), n)
    assert got.dtype == jnp.int32 and got.shape == (n, n)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_hand_worked_three_classes():
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [2, 2, 0]])
    hist = np.asarray(confusion_matrix(jnp.asarray(gt), jnp.asarray(pred), 3))
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 1, 1], [0, 0, 1]])
    s = scores(hist)
    assert s["pixel_acc"] == pytest.approx(3 / 5)
    assert s["mean_acc"] == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)
    np.testing.assert_allclose(s["iu"], [1 / 2, 1 / 3, 1 / 2])
    assert s["mean_iu"] == pytest.approx(4 / 9)
    assert s["fw_iu"] == pytest.approx(0.4 * 1 / 2 + 0.4 * 1 / 3 + 0.2 * 1 / 2)


def test_empty_matrix_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = scores(np.zeros((3, 3), np.int64))
    assert all(math.isnan(s[k]) for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"))
    assert np.isnan(s["iu"]).all()


def test_accumulator_flushes_to_int64_before_int32_overflow(monkeypatch):
    monkeypatch.setattr(metrics, "INT32_MAX", 100)  # pretend int32 holds 100 so flushing is exercised
    acc = ConfusionAccumulator(2)
    parts = [np.array([[30, 0], [0, 10]]), np.array([[20, 5], [5, 10]]), np.array([[60, 0], [0, 0]])]
    for part in parts:
        acc.add(jnp.asarray(part, jnp.int32), int(part.sum()))
    assert acc._pending == 60  # the first two were moved to the host total before the third
    total = acc.total()
    assert total.dtype == np.int64
    np.testing.assert_array_equal(total, sum(parts))
    with pytest.raises(ValueError, match="overflows"):
        acc.add(jnp.zeros((2, 2), jnp.int32), 101)


def test_format_table_lists_every_class():
    s = scores(np.array([[5, 1, 0], [0, 4, 0], [0, 0, 0]]))
    table = format_table(s, ["background", "cat", "unicorn"])
    assert "mean IU" in table and "pixel accuracy" in table and "f.w. IU" in table
    lines = {line.split()[0]: line for line in table.splitlines() if line.strip()}
    assert lines["background"].split()[-1] == f"{100 * 5 / 6:.2f}"
    assert lines["unicorn"].split()[-1] == "n/a"
    with pytest.raises(ValueError):
        format_table(s, ["only", "two"])
