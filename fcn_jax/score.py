"""Scoring saved predictions against ground truth, both as label PNGs, with the reference's metrics.

``python -m fcn_jax.score PRED_DIR GT_DIR`` (the tool is :mod:`fcn_jax.cli.score`). Files are matched
by stem (``a.png`` in one folder with ``a.png`` in the other); only ``*.png`` files are read, both folders
with :func:`fcn_jax.data.folder.read_mask`: a palette PNG gives its pixel indices (as ``predict.py``,
``eval.py --save-predictions`` and VOC write them), a grayscale (1-, 8- or 16-bit) PNG its values, an
RGB(A) PNG, given a colour per class, the class of each colour (and 255 for the void colour). Values are
0..254 for classes and 255 for void (``fcn_jax.preprocess.VOID``).

One confusion matrix over all images, as the reference's ``score.py`` (``fast_hist(a, b, n)``:
``np.bincount(n * a[k] + b[k], minlength=n**2)`` with ``k = (a >= 0) & (a < n)``), then the scores of
:func:`fcn_jax.metrics.scores`. Ground-truth pixels of value 255 (void) are skipped. A prediction
outside ``0..n-1`` or void (255) on a non-void pixel is **wrong**: it counts in its ground-truth class's
row total but in no class's column, so it lowers pixel accuracy, that class's accuracy and its IU, and
raises no other class's IU. (score.py never meets one, its predictions being an argmax; its formula
would add such a pixel to another class's cell, or fail for the last class.) The counting is int64
NumPy on the host, so any number of pixels counts exactly.

Nothing is run on import, and this module never imports the command line tool (which imports it);
``python -m fcn_jax.score`` runs the tool, imported only then.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fcn_jax.preprocess import VOID

Colour = tuple[int, int, int]

KNOWN_SUFFIXES = ("_overlay", "_probs", "_panel")  # predict.py / eval.py extras beside the label PNGs


class ScoreError(ValueError):
    """Files that cannot be scored: one line naming the file(s) and what was expected."""


# ------------------------------------------------------------------------------- counting, scores

def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(n, n + 1) int64 confusion counts of one label map: ``hist[i, j]`` = pixels of ground-truth class
    ``i`` predicted ``j``; column ``n`` counts predictions outside ``0..n-1`` or void (wrong for every class).

    ``gt``, ``pred``: integer arrays of one shape. Ground truth outside ``0..n-1`` or void (255, even when
    n > 255) is skipped, as in score.py's ``fast_hist``: ``bincount((n + 1) * gt[k] + pred[k],
    minlength=n * (n + 1))``.
    """
    n = int(num_classes)
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth has {gt.size} pixels, prediction {pred.size}")
    k = (gt >= 0) & (gt < n) & (gt != VOID)
    p = pred[k]
    p = np.where((p >= 0) & (p < n) & (p != VOID), p, n)
    return np.bincount((n + 1) * gt[k] + p, minlength=n * (n + 1)).reshape(n, n + 1)


def scores(hist: np.ndarray) -> dict[str, Any]:
    """The reference's scores of (n, n + 1) counts from :func:`confusion` (see :func:`fcn_jax.metrics.scores`).

    Column ``n`` (out-of-range predictions) counts in the ground-truth row totals only. Returns floats
    ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fw_iu`` (fractions; nan when nothing was scored) and
    ``iu`` (n,) float64, nan for classes absent from both ground truth and predictions.
    """
    from fcn_jax import metrics
    hist = np.asarray(hist, np.int64)
    n = hist.shape[0]
    if hist.shape != (n, n + 1):
        raise ValueError(f"expected (n, n + 1) counts, got shape {hist.shape}")
    square = np.zeros((n + 1, n + 1), np.int64)  # the extra column as a class with no ground-truth pixels:
    square[:n] = hist  # its accuracy is 0/0 and its frequency 0, so only the mean IU must leave it out
    result = metrics.scores(square)
    iu = result["iu"][:n]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-nan: nan, as intended
        result.update(iu=iu, mean_iu=float(np.nanmean(iu)) if n else math.nan)
    return result


# -------------------------------------------------------------------------------------- folders

def _png_stems(folder: str, what: str) -> dict[str, str]:
    """{stem: file name} of the PNG files in ``folder``; raises ScoreError for a missing folder or a stem twice."""
    if not os.path.isdir(folder):
        raise ScoreError(f"{what} {folder}: " + ("not a directory" if os.path.exists(folder) else "no such directory"))
    stems: dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() != ".png" or not os.path.isfile(os.path.join(folder, name)):
            continue
        if stem in stems:
            raise ScoreError(f"{what} {folder}: two files with the stem {stem!r}: {stems[stem]}, {name}")
        stems[stem] = name
    return stems


def _some(names: Sequence[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def match_files(pred_dir: str, gt_dir: str) -> tuple[list[tuple[str, str]], list[str]]:
    """``([(pred path, gt path)] by stem, sorted; [ignored prediction files])``.

    Prediction files without ground truth are ignored if their stem ends in ``_overlay``, ``_probs`` or
    ``_panel``; any other unmatched file, on either side, is a ScoreError naming the first few.
    """
    preds, gts = _png_stems(pred_dir, "PRED_DIR"), _png_stems(gt_dir, "GT_DIR")
    for folder, files, what in ((gt_dir, gts, "GT_DIR"), (pred_dir, preds, "PRED_DIR")):
        if not files:
            raise ScoreError(f"{what} {folder}: no .png files")
    missing = [gts[s] for s in gts if s not in preds]
    if missing:
        raise ScoreError(f"{len(missing)} of {len(gts)} ground-truth files have no prediction in {pred_dir}: "
                         f"{_some(missing)}")
    extra = [preds[s] for s in preds if s not in gts]
    stray = [name for name in extra if not os.path.splitext(name)[0].endswith(KNOWN_SUFFIXES)]
    if stray:
        raise ScoreError(f"{len(stray)} prediction files have no ground truth in {gt_dir}: {_some(stray)}")
    pairs = [(os.path.join(pred_dir, preds[s]), os.path.join(gt_dir, gts[s])) for s in sorted(gts)]
    return pairs, [os.path.join(pred_dir, name) for name in extra]


def _grow(hist: np.ndarray, n: int) -> np.ndarray:
    """(m, m + 1) counts re-indexed for n >= m classes (the out-of-range column stays last)."""
    m = hist.shape[0]
    if n == m:
        return hist
    grown = np.zeros((n, n + 1), np.int64)
    grown[:m, :m] = hist[:, :m]
    grown[:m, n] = hist[:, m]
    return grown


def score_dirs(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, num_classes: int | None = None,
               class_names: Sequence[str] | None = None, colours: Sequence[Colour] | None = None,
               progress: bool = True, void_colour: Colour | None = None) -> dict[str, Any]:
    """Scores the label PNGs of ``pred_dir`` against those of ``gt_dir`` (matched by stem).

    The number of classes n: ``num_classes``, else ``len(class_names)``, else the largest label value
    (255 excluded) in either folder + 1. ``colours`` (the RGB of each class, in class order) and
    ``void_colour`` read RGB masks. Returns :func:`scores`' keys plus ``confusion`` (n, n + 1) int64, ``num_classes``, ``class_names``,
    ``num_images``, ``num_pixels`` (scored: non-void ground truth), ``num_void``, ``num_invalid`` (scored
    pixels predicted void or outside 0..n-1) and ``ignored`` (prediction files without ground truth, skipped).
    Raises ScoreError (one line, naming the files) for anything that cannot be scored.
    """
    from tqdm import tqdm

    from fcn_jax.data.folder import read_mask
    pred_dir, gt_dir = os.fspath(pred_dir), os.fspath(gt_dir)
    if num_classes is not None and not 1 <= num_classes <= VOID:
        raise ScoreError(f"the number of classes must be in 1..{VOID} (label values are 0..254, 255 is void), "
                         f"got {num_classes}")
    if class_names is not None:
        class_names = tuple(class_names)
        if num_classes is not None and num_classes != len(class_names):
            raise ScoreError(f"{num_classes} classes but {len(class_names)} class names")
        num_classes = len(class_names)
    pairs, ignored = match_files(pred_dir, gt_dir)
    known = num_classes is not None
    n = num_classes if known else 0
    hist = np.zeros((n, n + 1), np.int64)
    void = 0
    for pred_path, gt_path in tqdm(pairs, desc="score", unit="img", disable=not progress, dynamic_ncols=True):
        gt, pred = (read_mask(path, colours=colours, void_colour=void_colour).astype(np.int64)
                    for path in (gt_path, pred_path))
        if gt.shape != pred.shape:
            raise ScoreError(f"{pred_path} is {pred.shape[1]}x{pred.shape[0]} but {gt_path} is "
                             f"{gt.shape[1]}x{gt.shape[0]} (width x height)")
        labelled = gt != VOID
        void += int(gt.size - labelled.sum())
        if known:
            bad = labelled & ((gt < 0) | (gt >= n))
            if bad.any():
                raise ScoreError(f"{gt_path}: label value {int(gt[bad][0])} outside 0..{n - 1} (and not void "
                                 f"{VOID}) for {n} classes")
        else:
            top = max([int(gt[labelled].max(initial=-1)), int(pred[pred != VOID].max(initial=-1))])
            if top >= n:
                n = top + 1
                hist = _grow(hist, n)
        hist += confusion(gt, pred, n)
    if n == 0:
        raise ScoreError(f"{gt_dir}, {pred_dir}: every pixel is void (255); pass --num-classes")
    names = class_names if class_names is not None else tuple(str(i) for i in range(n))
    result = scores(hist)
    result.update(confusion=hist, num_classes=n, class_names=names, num_images=len(pairs),
                  num_pixels=int(hist.sum()), num_void=void, num_invalid=int(hist[:, n].sum()), ignored=ignored)
    return result


if __name__ == "__main__":  # python -m fcn_jax.score: the tool, imported here only (it imports this module)
    from fcn_jax.cli.score import main
    sys.exit(main())
