"""The reference's ``score.py``: one confusion matrix over the whole split, then four scores.

``hist[i, j]`` counts the pixels of ground-truth class ``i`` predicted as class ``j``; pixels whose label
is not in ``0..n-1`` (255 = void, the padding of a bucketed batch) are skipped. From it:

- pixel accuracy ``diag.sum() / hist.sum()``
- mean accuracy ``nanmean(diag / hist.sum(1))``
- per-class IU ``diag / (hist.sum(1) + hist.sum(0) - diag)``, mean IU ``nanmean(IU)``
- frequency-weighted IU ``sum(freq[freq > 0] * IU[freq > 0])`` with ``freq = hist.sum(1) / hist.sum()``

A class absent from both the ground truth and the predictions has IU nan and is left out of the means,
as in the reference; a class predicted but absent from the ground truth has IU 0, which pulls the
reference's mean IU down. The reference's siftflow-fcn*/solve.py notes that this makes its semantic
mean IU "off" (cow, desert and moon never occur in SIFT Flow's test split) and says to score from the
histogram instead: ``mean_iu_present`` is that score, the mean IU over the classes present in the
ground truth (``hist.sum(1) > 0``). ``mean_iu`` stays the reference's ``score.py`` number.

Counting: one batch's matrix is int32 on device (exact below 2**31 pixels per batch); the split total
is summed on device by :class:`ConfusionAccumulator`, which moves it into an int64 host total before
the device sum could reach 2**31, so a split of any size (SBD train is ~1.6e9 pixels) counts exactly.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

INT32_MAX = 2**31 - 1
SUMMARY = (("pixel_acc", "pixel accuracy"), ("mean_acc", "mean accuracy"), ("mean_iu", "mean IU"),
           ("fw_iu", "f.w. IU"))
PRESENT = ("mean_iu_present", "mean IU, classes in ground truth")


def confusion_matrix(labels: jax.Array, preds: jax.Array, num_classes: int) -> jax.Array:
    """(n, n) int32 confusion matrix of one batch, on device and jit-friendly.

    ``labels`` and ``preds``: integer arrays of the same shape (e.g. (B, H, W)). Rows are ground truth,
    columns predictions; a pixel whose label or prediction is outside ``0..n-1`` goes to an extra bin
    that is dropped.
    """
    n = num_classes
    labels = labels.reshape(-1).astype(jnp.int32)
    preds = preds.reshape(-1).astype(jnp.int32)
    valid = (labels >= 0) & (labels < n) & (preds >= 0) & (preds < n)
    index = jnp.where(valid, n * labels + preds, n * n)
    return jnp.bincount(index, length=n * n + 1)[:n * n].reshape(n, n)


def scores(hist: np.ndarray) -> dict[str, Any]:
    """The reference's scores of a confusion matrix ``hist`` (n, n).

    Returns floats ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fw_iu`` (the reference's score.py; fractions
    in [0, 1]; nan for an empty matrix), ``mean_iu_present`` (mean IU over the classes present in the ground
    truth, see the module docstring) and ``iu``, the per-class IU as a float64 array (n,) with nan for
    absent classes.
    """
    hist = np.asarray(hist, np.float64)
    diag, gt, pred, total = np.diag(hist), hist.sum(1), hist.sum(0), hist.sum()
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-nan: nan, as intended
        iu = diag / (gt + pred - diag)
        freq = gt / total
        return {
            "pixel_acc": float(diag.sum() / total),
            "mean_acc": float(np.nanmean(diag / gt)),
            "mean_iu": float(np.nanmean(iu)),
            "fw_iu": float((freq[freq > 0] * iu[freq > 0]).sum()) if total else math.nan,
            "mean_iu_present": float(iu[gt > 0].mean()) if (gt > 0).any() else math.nan,
            "iu": iu,
        }


def format_table(result: dict[str, Any], class_names: Sequence[str], present: bool = False) -> str:
    """The four scores and the per-class IU table (percentages), as printed by ``eval.py``; with ``present``
    also ``mean_iu_present``, the mean IU over the classes in the ground truth (SIFT Flow's heads)."""
    if len(class_names) != len(result["iu"]):
        raise ValueError(f"{len(class_names)} class names for {len(result['iu'])} classes")
    summary = list(SUMMARY)
    if present and PRESENT[0] in result:
        summary.insert(3, PRESENT)
    width = max([len(label) for _, label in summary] + [len(name) for name in class_names])
    pct = lambda v: "    n/a" if math.isnan(v) else f"{100 * v:7.2f}"  # noqa: E731
    lines = [f"{label:<{width}}  {pct(result[key])}" for key, label in summary]
    lines += ["", f"{'class':<{width}}  {'IU':>7}", "-" * (width + 9)]
    lines += [f"{name:<{width}}  {pct(float(v))}" for name, v in zip(class_names, result["iu"])]
    return "\n".join(lines)


def _host(x: jax.Array) -> np.ndarray:
    """A replicated device array as a host NumPy array (works in multi-process runs too)."""
    return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else np.asarray(x)


class ConfusionAccumulator:
    """Sums per-batch confusion matrices on device without a host round trip per batch.

    ``add(hist, num_pixels)`` adds a batch's (n, n) int32 matrix; ``num_pixels`` (the batch's label
    count, padding included) bounds what it can add to any entry. Before the int32 device sum could
    overflow, it is moved into an int64 host total. ``total()`` returns the exact int64 matrix.
    """

    def __init__(self, num_classes: int):
        self._host = np.zeros((num_classes, num_classes), np.int64)
        self._device: jax.Array | None = None
        self._pending = 0

    def add(self, hist: jax.Array, num_pixels: int) -> None:
        if num_pixels > INT32_MAX:
            raise ValueError(f"a batch of {num_pixels} pixels overflows its int32 confusion matrix")
        if self._pending + num_pixels > INT32_MAX:
            self._flush()
        self._device = hist if self._device is None else self._device + hist
        self._pending += num_pixels

    def _flush(self) -> None:
        if self._device is not None:
            self._host += _host(self._device).astype(np.int64)
        self._device, self._pending = None, 0

    def total(self) -> np.ndarray:
        """The (n, n) int64 confusion matrix of everything added so far (blocks on the device)."""
        self._flush()
        return self._host.copy()
