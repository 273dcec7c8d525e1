"""Dataset evaluation: the reference's metrics over a split, sharded over every device.

Library side of ``eval.py`` and of the training loop's periodic validation:

- :func:`make_eval_step` compiles ``(params, image, label[, widths, sizes]) -> (hist, preds)``: parameters
  replicated, the batch split over the mesh's ``'data'`` axis, the (n, n) confusion matrix summed over
  all devices by XLA.
- :func:`evaluate` runs it over an iterable of ``EvalBatch`` (``fcn_jax.data.pipeline.eval_batches``:
  by default batches of images of one exact size, as the reference; optionally padded into shape
  buckets, label 255 in the padding and filler, so neither is ever counted) and sums the matrices
  on device. jit compiles the step once per distinct batch shape.

Every evaluated output of the model (:class:`fcn_jax.models.Output`; SIFT Flow: semantic and geometric) is
scored on its own: one confusion matrix per output, against the labels of its batch key (``EvalBatch.labels``),
each with the reference's metrics (``EvalResult.heads``); ``EvalResult.hist`` / ``scores`` are the main
output's. Training-only outputs (an auxiliary head) are not computed.

The forward pass and its test-time augmentation are :func:`fcn_jax.inference.class_scores`. With
``mask`` (a ``registry.maskable`` variant) every image of a padded batch is masked to its own size
(:mod:`fcn_jax.models.extent`): its scores are the exact-size ones, mirrored passes included. Mirroring
is per image within its own width, so the padding of a bucketed batch stays on the right; scaling
resizes the whole padded canvas, so an image's last row and column blend slightly with the padding.
Exact-size batches have no padding.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from fcn_jax.inference import class_scores, label_map
from fcn_jax.metrics import ConfusionAccumulator, confusion_matrix, scores
from fcn_jax.parallel import check_batch_size, data_sharding, make_mesh, put_replicated, replicated
from fcn_jax.programs import bounded_jit
from fcn_jax.models.outputs import LABEL, Output, evaluated
from fcn_jax.models.registry import evaluated_outputs
from fcn_jax.variables import as_variables

if TYPE_CHECKING:
    from fcn_jax.data.pipeline import EvalBatch
    from fcn_jax.models import FCN


# ---------------------------------------------------------------------------------------------------
# Sharded evaluation


def model_outputs(model: Any, num_classes: int) -> tuple[Output, ...]:
    """The outputs ``model`` is scored on (its evaluated :class:`~fcn_jax.models.Output` s); a module that
    declares none names its variant's (a stand-in with a ``variant``), else has one, 'out', of
    ``num_classes``."""
    declared = getattr(model, "outputs", None)
    if declared is not None:
        return evaluated(tuple(declared))
    variant = getattr(model, "variant", None)
    if variant is not None:
        return evaluated_outputs(variant, int(num_classes))
    return (Output("out", int(num_classes)),)


def make_eval_step(model: FCN, num_classes: int, mesh: Mesh | None = None, *, flip: bool = False,
                   scales: Sequence[float] = (1.0,), mask: bool = False) -> Callable[..., tuple[Any, Any]]:
    """The compiled evaluation step ``step(variables, image, labels, widths=None, sizes=None) -> (hists, preds)``.

    ``variables``: the model's variables (every collection; a bare parameter tree is taken as
    ``{'params': tree}``), replicated over ``mesh`` (place them once with ``fcn_jax.parallel.put_replicated``,
    or every call copies them); ``image`` (B, H, W, C) float32 preprocessed, ``labels`` {batch key: (B, H, W)
    int} (255 = void / padding; a single array is the 'label' key) and ``widths`` (B,) int32 (true image
    widths, only read when ``flip``) are sharded along B over the ``'data'`` axis (B a multiple of the
    device count). ``mask``: every image's forward pass masked to its own extent, ``sizes`` (B, 2) int32
    (h, w of each image top-left in the padded batch, 0 for filler; sharded like the image) required:
    each image's scores are then its own-size ones (:class:`fcn_jax.models.FCN`; a ``registry.maskable``
    variant). Returns ``{output: hist}`` ((n, n) int32, replicated) and ``{output: preds}`` ((B, H, W)
    int32, sharded) for every evaluated output (:func:`model_outputs`). ``mesh`` defaults to all devices.
    Steps are cached, so repeated calls (periodic validation) reuse the compiled program.
    """
    mesh = make_mesh() if mesh is None else mesh
    outputs = tuple((o.name, o.batch_key, o.classes) for o in model_outputs(model, num_classes))
    jitted = _compiled_step(model, outputs, mesh, bool(flip), tuple(float(s) for s in scales), bool(mask))

    def step(variables: Any, image: jax.Array, labels: Any, widths: jax.Array | None = None,
             sizes: jax.Array | None = None) -> tuple[Any, Any]:
        if not isinstance(labels, Mapping):
            labels = {LABEL: labels}
        if mask and sizes is None:
            raise ValueError("a masked evaluation step needs the images' sizes")
        return jitted(as_variables(variables), image, dict(labels), widths if flip else None,
                      sizes if mask else None)

    return step


@functools.lru_cache(maxsize=16)
def _compiled_step(model: FCN, outputs: tuple[tuple[str, str, int], ...], mesh: Mesh, flip: bool,
                   scales: tuple[float, ...], mask: bool):
    def step(variables, image, labels, widths, sizes):
        out = class_scores(model, variables, image, flip=flip, scales=scales, widths=widths, sizes=sizes)
        preds = {name: label_map(out[name]) for name, _, _ in outputs}
        return {name: confusion_matrix(labels[key], preds[name], n) for name, key, n in outputs}, preds

    rep, data = replicated(mesh), data_sharding(mesh)
    return bounded_jit(step, in_shardings=(rep, data, data, data, data), out_shardings=(rep, data))


@dataclasses.dataclass
class HeadResult:
    """One head's ``hist`` (n, n) int64 confusion matrix and its ``scores`` (:func:`fcn_jax.metrics.scores`)."""

    hist: np.ndarray
    scores: dict[str, Any]


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` measured: ``hist`` (n, n) int64 confusion matrix of the whole split,
    ``scores`` (see :func:`fcn_jax.metrics.scores`), the image count, and the wall time (compilation
    included) and throughput. ``heads``: every evaluated output's :class:`HeadResult` by output name
    ('out' for the VOC nets; 'sem', 'geo' for SIFT Flow); ``hist`` / ``scores`` are the main output's."""

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


def evaluate(model: FCN, variables: Any, batches: Iterable[EvalBatch], num_classes: int, *,
             mesh: Mesh | None = None, flip: bool = False, scales: Sequence[float] = (1.0,), mask: bool = False,
             on_batch: Callable[[EvalBatch, np.ndarray], bool | None] | None = None,
             progress: bool = True, total: int | None = None, desc: str = "eval",
             leave: bool = True) -> EvalResult:
    """Evaluates ``model`` with ``variables`` (every collection; running statistics are used, nothing is
    updated) over ``batches`` and returns the reference's metrics, one confusion matrix per evaluated output
    (training-only outputs are not scored).

    ``batches``: ``EvalBatch`` objects (``image`` (B, H, W, C) float32 preprocessed, ``label``
    (B, H, W) int with 255 in void, padding and filler, ``labels`` {batch key: (B, H, W)} of every
    output's labels (the 'label' key defaults to ``label``), ``sizes`` (B, 2), ``names``, ``indices`` (B,) with -1 for filler), this
    process's rows of a global batch in multi-process runs. ``num_classes``: the model's. ``mask``: each
    image's forward pass masked to its own size (``sizes``), so padded batches score exactly as each image
    alone at its own size (:func:`make_eval_step`; a ``registry.maskable`` variant). B must
    be a multiple of the device count of ``mesh`` (default: all devices). The confusion matrices stay on
    device until the end. ``on_batch(batch, preds)`` is called on the host after each batch with this
    process's predictions (B, H, W) int32 of the main output (e.g. to save pictures); once it returns
    False it is not called again and predictions are no longer copied to the host. ``progress`` shows a
    tqdm bar in images/s (``total`` = expected image count, optional) titled ``desc``, cleared at the end
    unless ``leave`` (validation inside training clears its bar and logs one line instead).
    """
    mesh = make_mesh() if mesh is None else mesh
    step = make_eval_step(model, num_classes, mesh, flip=flip, scales=scales, mask=mask)
    outputs = model_outputs(model, num_classes)
    variables = put_replicated(as_variables(variables), mesh)
    sharding = data_sharding(mesh)
    accumulators = {o.name: ConfusionAccumulator(o.classes) for o in outputs}
    count = 0
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc=desc, dynamic_ncols=True, leave=leave,
              disable=not progress or jax.process_index() != 0) as bar:
        for batch in batches:
            rows = batch.image.shape[0] * (1 if isinstance(batch.image, jax.Array) else jax.process_count())
            check_batch_size(int(rows), mesh, flag="batch size")
            image = _global(batch.image, sharding)
            host_sizes = np.asarray(batch.sizes).astype(np.int32)
            sizes = _global(host_sizes, sharding) if mask else None
            widths = _global(host_sizes[:, 1], sharding) if flip else None
            given = dict(getattr(batch, "labels", None) or {})
            given.setdefault(LABEL, batch.label)
            missing = sorted({o.batch_key for o in outputs if given.get(o.batch_key) is None})
            if missing:
                raise ValueError(f"{getattr(model, 'variant', 'the model')} is scored on "
                                 f"{', '.join(o.name for o in outputs)} but the batches have no "
                                 f"{', '.join(missing)} labels (eval_batches(labels=...))")
            labels = {key: _global(given[key], sharding) for key in {o.batch_key for o in outputs}}
            hists, preds = step(variables, image, labels, widths, sizes)
            for o in outputs:
                accumulators[o.name].add(hists[o.name], labels[o.batch_key].size)
            preds = preds[outputs[0].name]
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
    first = heads[outputs[0].name]
    return EvalResult(hist=first.hist, scores=first.scores, num_images=count, seconds=seconds,
                      images_per_s=count / seconds if seconds > 0 else math.nan, heads=heads)
