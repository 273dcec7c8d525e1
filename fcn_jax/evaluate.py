"""Dataset evaluation: the reference's metrics over a split, sharded over every device.

Library side of ``eval.py`` and of the training loop's periodic validation:

- :func:`make_eval_step` compiles ``(params, image, label[, widths]) -> (hist, preds)``: parameters
  replicated, the batch split over the mesh's ``'data'`` axis, the (n, n) confusion matrix summed over
  all devices by XLA.
- :func:`evaluate` runs it over an iterable of ``EvalBatch`` (``fcn_jax.data.pipeline.eval_batches``:
  by default batches of images of one exact size, as the reference; optionally padded into shape
  buckets, label 255 in the padding and filler, so neither is ever counted) and sums the matrices
  on device. jit compiles the step once per distinct batch shape.

A multi-head model (SIFT Flow: semantic and geometric) is scored head by head: one confusion matrix
per head, against the labels of its batch key (``EvalBatch.labels``, :func:`fcn_jax.preprocess.head_targets`),
each with the reference's metrics (``EvalResult.heads``); ``EvalResult.hist`` / ``scores`` are the first
head's.

The forward pass and its test-time augmentation are :func:`fcn_jax.inference.class_scores`. Mirroring
is per image within its own width, so the padding of a bucketed batch stays on the right; scaling
resizes the whole padded canvas, so an image's last row and column blend slightly with the padding.
Exact-size batches have no padding.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from fcn_jax.inference import class_scores
from fcn_jax.metrics import ConfusionAccumulator, confusion_matrix, scores
from fcn_jax.parallel import check_batch_size, data_sharding, make_mesh, put_replicated, replicated
from fcn_jax.preprocess import LABEL, SEGMENTATION, Target, head_targets

if TYPE_CHECKING:
    from fcn_jax.data.pipeline import EvalBatch
    from fcn_jax.models import FCN


# ---------------------------------------------------------------------------------------------------
# Sharded evaluation


def model_targets(model: Any, num_classes: int) -> tuple[Target, ...]:
    """The heads ``model`` is scored on (:func:`fcn_jax.preprocess.head_targets`); a model that names no
    FCN variant has one head."""
    variant = getattr(model, "variant", None)
    if variant is None:
        return (Target("", LABEL, SEGMENTATION, int(num_classes)),)
    return head_targets(variant, int(num_classes))


def head_class_names(targets: Sequence[Target], class_names: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Class names per head: ``class_names`` for the first head, the dataset's own for the others (SIFT
    Flow's geometric classes), else ``class_<i>``."""
    out = {targets[0].head: tuple(class_names)}
    for target in targets[1:]:
        names: tuple[str, ...] | None = None
        if target.field == "geometric":
            from fcn_jax.data.sift_flow import GEOMETRIC_CLASSES
            names = GEOMETRIC_CLASSES
        if names is None or len(names) != target.num_classes:
            names = tuple(f"class_{i}" for i in range(target.num_classes))
        out[target.head] = tuple(names)
    return out


def make_eval_step(model: FCN, num_classes: int, mesh: Mesh | None = None, *, flip: bool = False,
                   scales: Sequence[float] = (1.0,)) -> Callable[..., tuple[Any, Any]]:
    """The compiled evaluation step ``step(params, image, label, widths=None) -> (hist, preds)``.

    ``params``: parameter tree (or ``{'params': ...}``), replicated over ``mesh`` (place it once with
    ``fcn_jax.parallel.put_replicated``, or every call copies it); ``image`` (B, H, W, C) float32
    preprocessed, ``label`` (B, H, W) int (255 = void / padding) and ``widths`` (B,) int32 (true image
    widths, only read when ``flip``) are sharded along B over the ``'data'`` axis (B a multiple of
    the device count). Returns ``hist`` (n, n) int32 replicated and ``preds`` (B, H, W) int32 sharded.
    A multi-head model takes ``label`` as ``{head: (B, H, W)}`` and returns ``{head: hist}`` and
    ``{head: preds}`` (:func:`model_targets`). ``mesh`` defaults to all devices. Steps are cached, so
    repeated calls (periodic validation) reuse the compiled program.
    """
    mesh = make_mesh() if mesh is None else mesh
    heads = tuple((t.head, t.num_classes) for t in model_targets(model, num_classes))
    jitted = _compiled_step(model, heads, mesh, bool(flip), tuple(float(s) for s in scales))

    def step(params: Any, image: jax.Array, label: Any, widths: jax.Array | None = None) -> tuple[Any, Any]:
        return jitted(params, image, label, widths if flip else None)

    return step


@functools.lru_cache(maxsize=16)
def _compiled_step(model: FCN, heads: tuple[tuple[str, int], ...], mesh: Mesh, flip: bool,
                   scales: tuple[float, ...]):
    def step(params, image, label, widths):
        out = class_scores(model, params, image, flip=flip, scales=scales, widths=widths)
        if len(heads) == 1:
            preds = jnp.argmax(out, axis=-1).astype(jnp.int32)
            return confusion_matrix(label, preds, heads[0][1]), preds
        preds = {head: jnp.argmax(out[head], axis=-1).astype(jnp.int32) for head, _ in heads}
        return {head: confusion_matrix(label[head], preds[head], n) for head, n in heads}, preds

    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data, data, data), out_shardings=(rep, data))


@dataclasses.dataclass
class HeadResult:
    """One head's ``hist`` (n, n) int64 confusion matrix and its ``scores`` (:func:`fcn_jax.metrics.scores`)."""

    hist: np.ndarray
    scores: dict[str, Any]


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` measured: ``hist`` (n, n) int64 confusion matrix of the whole split,
    ``scores`` (see :func:`fcn_jax.metrics.scores`), the image count, and the wall time (compilation
    included) and throughput. ``heads``: every head's :class:`HeadResult` by head key ('' for a
    single-head model; 'sem', 'geo' for SIFT Flow); ``hist`` / ``scores`` are the first head's."""

    hist: np.ndarray
    scores: dict[str, Any]
    num_images: int
    seconds: float
    images_per_s: float
    heads: dict[str, HeadResult] = dataclasses.field(default_factory=dict)


def _global(x: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``x`` as a global array with ``sharding``: jax arrays are moved if needed; host arrays are this
    process's rows (``jax.make_array_from_process_local_data``)."""
    if isinstance(x, jax.Array):
        return x if x.sharding.is_equivalent_to(sharding, x.ndim) else jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def local_rows(x: Any) -> np.ndarray:
    """The rows of a batch-sharded array that live on this process, as NumPy (all rows on one host)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    shards = {}
    for shard in x.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard.data)
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)])


def evaluate(model: FCN, params: Any, batches: Iterable[EvalBatch], num_classes: int, *,
             mesh: Mesh | None = None, flip: bool = False, scales: Sequence[float] = (1.0,),
             on_batch: Callable[[EvalBatch, np.ndarray], bool | None] | None = None,
             progress: bool = True, total: int | None = None, desc: str = "eval",
             leave: bool = True) -> EvalResult:
    """Evaluates ``model`` with ``params`` over ``batches`` and returns the reference's metrics.

    ``batches``: ``EvalBatch`` objects (``image`` (B, H, W, C) float32 preprocessed, ``label``
    (B, H, W) int with 255 in void, padding and filler, for a multi-head model ``labels`` {batch key:
    (B, H, W)} of every head, ``sizes`` (B, 2), ``names``, ``indices`` (B,) with -1 for filler), this
    process's rows of a global batch in multi-process runs. ``num_classes``: the (first) head's. B must
    be a multiple of the device count of ``mesh`` (default: all devices). The confusion matrices stay on
    device until the end. ``on_batch(batch, preds)`` is called on the host after each batch with this
    process's predictions (B, H, W) int32, the first head's (e.g. to save pictures); once it returns
    False it is not called again and predictions are no longer copied to the host. ``progress`` shows a
    tqdm bar in images/s (``total`` = expected image count, optional) titled ``desc``, cleared at the end
    unless ``leave`` (validation inside training clears its bar and logs one line instead).
    """
    mesh = make_mesh() if mesh is None else mesh
    step = make_eval_step(model, num_classes, mesh, flip=flip, scales=scales)
    targets = model_targets(model, num_classes)
    multi = len(targets) > 1
    params = put_replicated(params, mesh)
    sharding = data_sharding(mesh)
    accumulators = {t.head: ConfusionAccumulator(t.num_classes) for t in targets}
    count = 0
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, leave=leave,
              disable=not progress or jax.process_index() != 0) as bar:
        for batch in batches:
            rows = batch.image.shape[0] * (1 if isinstance(batch.image, jax.Array) else jax.process_count())
            check_batch_size(int(rows), mesh, flag="batch size")
            image = _global(batch.image, sharding)
            widths = _global(np.asarray(batch.sizes)[:, 1].astype(np.int32), sharding) if flip else None
            if multi:
                given = getattr(batch, "labels", None) or {}
                missing = [t.batch_key for t in targets if t.batch_key not in given]
                if missing:
                    raise ValueError(f"{model.variant} is scored on {', '.join(t.head for t in targets)} but the "
                                     f"batches have no {', '.join(missing)} labels (eval_batches(labels=...))")
                label = {t.head: _global(given[t.batch_key], sharding) for t in targets}
                hists, preds = step(params, image, label, widths)
                for t in targets:
                    accumulators[t.head].add(hists[t.head], label[t.head].size)
                preds = preds[targets[0].head]
            else:
                label = _global(batch.label, sharding)
                hist, preds = step(params, image, label, widths)
                accumulators[targets[0].head].add(hist, label.size)
            real = int((np.asarray(batch.indices) >= 0).sum())
            count += real
            if on_batch is not None and on_batch(batch, local_rows(preds)) is False:
                on_batch = None
            bar.update(real)
        heads = {head: HeadResult(hist, scores(hist)) for head, hist in
                 ((head, acc.total()) for head, acc in accumulators.items())}
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        count = int(np.sum(multihost_utils.process_allgather(np.int64(count))))
    seconds = time.perf_counter() - start
    first = heads[targets[0].head]
    return EvalResult(hist=first.hist, scores=first.scores, num_images=count, seconds=seconds,
                      images_per_s=count / seconds if seconds > 0 else math.nan, heads=heads)
