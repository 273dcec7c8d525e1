"""Full-resolution evaluation: the reference's metrics over a split, sharded over every device.

Library side of ``eval.py`` and of the training loop's periodic validation:

- :func:`make_eval_step` compiles ``(params, image, label[, widths]) -> (hist, preds)``: parameters
  replicated, the batch split over the mesh's ``'data'`` axis, the (n, n) confusion matrix summed over
  all devices by XLA.
- :func:`evaluate` runs it over an iterable of ``EvalBatch`` (``fcn_jax.data.pipeline.eval_batches``:
  variable-size images padded into shape buckets, label 255 in the padding, so padding is never
  counted) and sums the matrices on device.
- :func:`run_eval` is ``eval.py``: load a checkpoint, pick the dataset, evaluate, print, write JSON.

Test-time augmentation (optional): every scale ``s`` resizes the batch by ``s`` (bilinear), runs the
network, resizes the logits back (bilinear); with ``flip`` each pass also runs on the mirrored image;
the prediction is the argmax of the softmax probabilities averaged over all passes. A single pass
takes the argmax of the logits, as the reference does. Mirroring is per image within its own width,
so the padding of a bucketed batch stays on the right and flipping commutes with bucketing; scaling
resizes the whole padded canvas, so an image's last row and column blend slightly with the padding.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from fcn_jax import checkpoint
from fcn_jax.cli import ArgumentParser, UsageError, user_errors
from fcn_jax.config import DTYPES, ModelConfig
from fcn_jax.metrics import ConfusionAccumulator, confusion_matrix, format_table, scores
from fcn_jax.parallel import check_batch_size, data_sharding, make_mesh, put_replicated, replicated
from fcn_jax.preprocess import check_convention

if TYPE_CHECKING:
    from fcn_jax.data.pipeline import EvalBatch
    from fcn_jax.models import FCN


# ---------------------------------------------------------------------------------------------------
# The forward pass with optional test-time augmentation


def as_variables(params: Any) -> Mapping[str, Any]:
    """Accepts a parameter tree or a variables dict ``{'params': ...}``; returns the variables dict."""
    if isinstance(params, Mapping) and set(params) == {"params"}:
        return params
    return {"params": params}


def _mirror(x: jax.Array, widths: jax.Array | None) -> jax.Array:
    """Mirrors each row's first ``widths[b]`` columns of (B, H, W, C) ``x`` (all of them if None).

    Columns at and beyond a row's width (bucket padding) stay where they are; the map is an involution.
    """
    if widths is None:
        return x[:, :, ::-1]
    cols = jnp.arange(x.shape[2])[None, :]
    w = widths.astype(jnp.int32)[:, None]
    source = jnp.where(cols < w, w - 1 - cols, cols)  # (B, W)
    return jnp.take_along_axis(x, source[:, None, :, None], axis=2)


def is_single_pass(flip: bool, scales: Sequence[float]) -> bool:
    """Whether the settings mean one plain forward pass (no test-time augmentation)."""
    return not flip and tuple(scales) == (1.0,)


def class_scores(model: FCN, params: Any, x: jax.Array, *, flip: bool = False,
                 scales: Sequence[float] = (1.0,), widths: jax.Array | None = None) -> jax.Array:
    """Per-class scores (B, H, W, C) float32 of preprocessed images ``x`` (B, H, W, 3); argmax = prediction.

    One pass: the logits. Test-time augmentation: the softmax probabilities averaged over every scale
    (and its mirror image with ``flip``). ``widths`` (B,): each image's true width inside a padded batch
    (only used to mirror; None mirrors the whole width).
    """
    variables = as_variables(params)
    if is_single_pass(flip, scales):
        return model.apply(variables, x)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive, got {tuple(scales)}")
    batch, height, width, _ = x.shape
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = x if size == (height, width) else jax.image.resize(x, (batch, *size, x.shape[3]), "bilinear")
        ws = None if widths is None else jnp.round(widths * (size[1] / width))
        for mirrored in (False, True) if flip else (False,):
            logits = model.apply(variables, _mirror(xs, ws) if mirrored else xs)
            if mirrored:
                logits = _mirror(logits, ws)
            if size != (height, width):
                logits = jax.image.resize(logits, (batch, height, width, logits.shape[3]), "bilinear")
            total = total + jax.nn.softmax(logits, axis=-1)
    return total / (len(scales) * (2 if flip else 1))


# ---------------------------------------------------------------------------------------------------
# Sharded evaluation


def make_eval_step(model: FCN, num_classes: int, mesh: Mesh | None = None, *, flip: bool = False,
                   scales: Sequence[float] = (1.0,)) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """The compiled evaluation step ``step(params, image, label, widths=None) -> (hist, preds)``.

    ``params``: parameter tree (or ``{'params': ...}``), replicated over ``mesh`` (place it once with
    ``fcn_jax.parallel.put_replicated``, or every call copies it); ``image`` (B, H, W, 3) float32
    preprocessed, ``label`` (B, H, W) int (255 = void / padding) and ``widths`` (B,) int32 (true image
    widths, only read when ``flip``) are sharded along B over the ``'data'`` axis (B a multiple of
    the device count). Returns ``hist`` (n, n) int32 replicated and ``preds`` (B, H, W) int32 sharded.
    ``mesh`` defaults to all devices. Steps are cached, so repeated calls (periodic validation) reuse
    the compiled program.
    """
    mesh = make_mesh() if mesh is None else mesh
    jitted = _compiled_step(model, int(num_classes), mesh, bool(flip), tuple(float(s) for s in scales))

    def step(params: Any, image: jax.Array, label: jax.Array,
             widths: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        return jitted(params, image, label, widths if flip else None)

    return step


@functools.lru_cache(maxsize=16)
def _compiled_step(model: FCN, num_classes: int, mesh: Mesh, flip: bool, scales: tuple[float, ...]):
    def step(params, image, label, widths):
        out = class_scores(model, params, image, flip=flip, scales=scales, widths=widths)
        preds = jnp.argmax(out, axis=-1).astype(jnp.int32)
        return confusion_matrix(label, preds, num_classes), preds

    rep, data = replicated(mesh), data_sharding(mesh)
    return jax.jit(step, in_shardings=(rep, data, data, data), out_shardings=(rep, data))


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` measured: ``hist`` (n, n) int64 confusion matrix of the whole split,
    ``scores`` (see :func:`fcn_jax.metrics.scores`), the image count, and the wall time (compilation
    included) and throughput."""

    hist: np.ndarray
    scores: dict[str, Any]
    num_images: int
    seconds: float
    images_per_s: float


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
             progress: bool = True, total: int | None = None) -> EvalResult:
    """Evaluates ``model`` with ``params`` over ``batches`` and returns the reference's metrics.

    ``batches``: ``EvalBatch`` objects (``image`` (B, H, W, 3) float32 preprocessed, ``label``
    (B, H, W) int with 255 in void, padding and filler, ``sizes`` (B, 2), ``names``, ``indices`` (B,)
    with -1 for filler), this process's rows of a global batch in multi-process runs. B must be a
    multiple of the device count of ``mesh`` (default: all devices). The confusion matrix stays on
    device until the end. ``on_batch(batch, preds)`` is called on the host after each batch with this
    process's predictions (B, H, W) int32 (e.g. to save pictures); once it returns False it is not called
    again and predictions are no longer copied to the host. ``progress`` shows a tqdm bar in images/s
    (``total`` = expected image count, optional).
    """
    mesh = make_mesh() if mesh is None else mesh
    step = make_eval_step(model, num_classes, mesh, flip=flip, scales=scales)
    params = put_replicated(params, mesh)
    sharding = data_sharding(mesh)
    accumulator = ConfusionAccumulator(num_classes)
    count = 0
    start = time.perf_counter()
    with tqdm(total=total, unit="img", desc="eval", dynamic_ncols=True,
              disable=not progress or jax.process_index() != 0) as bar:
        for batch in batches:
            rows = batch.image.shape[0] * (1 if isinstance(batch.image, jax.Array) else jax.process_count())
            check_batch_size(int(rows), mesh, flag="batch size")
            image, label = _global(batch.image, sharding), _global(batch.label, sharding)
            widths = _global(np.asarray(batch.sizes)[:, 1].astype(np.int32), sharding) if flip else None
            hist, preds = step(params, image, label, widths)
            accumulator.add(hist, label.size)
            real = int((np.asarray(batch.indices) >= 0).sum())
            count += real
            if on_batch is not None and on_batch(batch, local_rows(preds)) is False:
                on_batch = None
            bar.update(real)
        hist = accumulator.total()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        count = int(np.sum(multihost_utils.process_allgather(np.int64(count))))
    seconds = time.perf_counter() - start
    return EvalResult(hist=hist, scores=scores(hist), num_images=count, seconds=seconds,
                      images_per_s=count / seconds if seconds > 0 else math.nan)


# ---------------------------------------------------------------------------------------------------
# Loading a model for inference (eval.py and predict.py)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: module, its config, parameters (host arrays) and metadata."""

    model: FCN
    config: ModelConfig
    params: Any
    meta: dict[str, Any]
    step: int | None

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.meta["class_names"])

    @property
    def convention(self) -> str:
        return self.meta["preprocessing"]


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Class names for weights that record none: PASCAL VOC's for 21 classes, else 'class_<i>'."""
    if num_classes == 21:
        from fcn_jax.data import VOC_CLASSES
        return tuple(VOC_CLASSES)
    return tuple(f"class_{i}" for i in range(num_classes))


def load_for_inference(path: str, step: str | int = "best", dtype: str | None = None) -> LoadedModel:
    """Loads a checkpoint directory (model checkpoint or training workdir, at ``step``) or a weights
    file (any format of ``fcn_jax.weights``). The network, classes and preprocessing come from its
    metadata; only the compute ``dtype`` may be overridden. Raises :class:`UsageError`."""
    if os.path.isdir(path):
        try:
            variables, meta = checkpoint.load_model(path, step)
        except (ValueError, KeyError, OSError) as e:  # CheckpointError is a ValueError naming the path
            message = str(e) if str(e).startswith(path) else f"{path}: {e}"
            raise UsageError(f"--ckpt {message}") from e
    elif os.path.isfile(path):
        from fcn_jax.weights import load_weights
        try:
            variables, meta = load_weights(path, return_meta=True)
        except (ValueError, KeyError, OSError) as e:
            raise UsageError(f"--ckpt {path}: {e}") from e
    else:
        raise UsageError(f"--ckpt {path}: no such file or directory")
    try:
        config = checkpoint.model_config_from_meta(meta)
        if dtype is not None:
            config = dataclasses.replace(config, dtype=dtype)
        if "class_names" not in meta:  # foreign weights files record no class names
            meta = dict(meta, class_names=default_class_names(config.num_classes))
        if len(meta["class_names"]) != config.num_classes:
            raise ValueError(f"{len(meta['class_names'])} class names for {config.num_classes} classes")
        check_convention(meta.get("preprocessing"))
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"--ckpt {path}: bad metadata: {e}") from e
    found = meta.get("step")
    return LoadedModel(config.build(), config, variables["params"], meta, None if found is None else int(found))


# ---------------------------------------------------------------------------------------------------
# Command-line tools' shared parsing


def parse_step(text: str) -> str | int:
    """``--step``: 'best', 'latest' or a step number."""
    if text in checkpoint.STEP_CHOICES:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'best', 'latest' or a step number, got {text!r}") from None


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated positive factors, e.g. '0.5,1,1.5'."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by eval.py and predict.py: the checkpoint, its step, dtype and test-time augmentation."""
    parser.add_argument("--ckpt", required=True, metavar="PATH",
                        help="checkpoint directory (model checkpoint or training workdir) or weights file")
    parser.add_argument("--step", type=parse_step, default="best", metavar="best|latest|N",
                        help="which step of a checkpoint directory (default: best)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="compute dtype override (default: the checkpoint's)")
    parser.add_argument("--flip", action="store_true", help="test-time augmentation: add horizontal flips")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S[,S...]",
                        help="test-time augmentation: input scales, e.g. 0.5,1,1.5 (default: 1)")


def run_cli(main: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None) -> int:
    """Parses ``argv`` and runs ``main``; user errors (``fcn_jax.cli.user_errors``: UsageError and the
    data, weights and checkpoint errors) become one stderr line and exit code 2."""
    args = parser.parse_args(argv)
    from absl import logging as absl_logging  # Orbax logs routine warnings through absl
    absl_logging.set_verbosity(absl_logging.ERROR)
    return user_errors(parser.prog)(main)(args)


# ---------------------------------------------------------------------------------------------------
# eval.py


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What ``eval.py`` evaluates, and how. None means: from the checkpoint / the dataset / defaults."""

    ckpt: str
    step: str | int = "best"
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    batch_size: int | None = None
    bucket_multiple: int = 128
    dtype: str | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    save_predictions: str | None = None
    num_pictures: int = 20
    json_path: str | None = None
    progress: bool = True


def training_config(meta: Mapping[str, Any]) -> Mapping[str, Any]:
    """The training config recorded in a checkpoint's ``meta['config']`` ({} if none)."""
    config = meta.get("config")
    return config if isinstance(config, Mapping) else {}


def dataset_from_meta(meta: Mapping[str, Any]) -> str | None:
    """The training dataset recorded in a checkpoint (``config.dataset``: a name or ``{'name': ...}``)."""
    dataset = training_config(meta).get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dataset.get("name")
    return dataset if isinstance(dataset, str) else None


def default_json_path(ckpt: str, dataset: str, split: str) -> str:
    """Where results go without ``--json``: inside a checkpoint directory, or next to a weights file."""
    name = f"eval_{dataset.replace('/', '-')}_{split}.json"
    if os.path.isdir(ckpt):
        return os.path.join(ckpt, name)
    return f"{os.path.splitext(ckpt)[0]}_{name}"


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree this package runs from, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class PredictionSaver:
    """``on_batch`` callback saving pictures of the first ``limit`` images to ``out_dir``:
    ``<name>.png`` (predicted labels, VOC palette PNG) and ``<name>_panel.png`` (image | truth | prediction)."""

    def __init__(self, out_dir: str, limit: int, class_names: Sequence[str], convention: str):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.limit, self.class_names, self.convention = out_dir, limit, class_names, convention
        self.saved = 0

    def __call__(self, batch: EvalBatch, preds: np.ndarray) -> bool:
        from fcn_jax.preprocess import deprocess
        from fcn_jax.viz import colorize, panel
        images, labels = local_rows(batch.image), local_rows(batch.label)
        for row, index in enumerate(np.asarray(batch.indices)):
            if index < 0 or self.saved >= self.limit:
                continue
            h, w = (int(v) for v in np.asarray(batch.sizes)[row])
            name = batch.names[row]
            name = name.decode() if isinstance(name, bytes) else str(name)
            stem = os.path.splitext(os.path.basename(name))[0] or f"{int(index):06d}"
            pred = preds[row, :h, :w]
            colorize(pred).save(os.path.join(self.out_dir, f"{stem}.png"))
            panel(deprocess(images[row, :h, :w], self.convention), labels[row, :h, :w], pred,
                  self.class_names).save(os.path.join(self.out_dir, f"{stem}_panel.png"))
            self.saved += 1
        return self.saved < self.limit


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """``eval.py``: evaluates a checkpoint on a dataset split, prints the table, writes and returns the
    JSON record. Raises :class:`UsageError` for anything the user can fix."""
    loaded = load_for_inference(config.ckpt, config.step, config.dtype)
    from fcn_jax import data
    from fcn_jax.data.pipeline import eval_batches

    n = loaded.config.num_classes
    dataset = config.dataset or dataset_from_meta(loaded.meta)
    if dataset is None:
        raise UsageError("--dataset is required: the checkpoint does not record its training dataset")
    recorded_dir = training_config(loaded.meta).get("data_dir")
    data_dir = config.data_dir or (recorded_dir if isinstance(recorded_dir, str) and os.path.isdir(recorded_dir)
                                   else None)
    try:
        info = data.dataset_meta(dataset, data_dir=data_dir)
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"--dataset {dataset}: {e}") from e
    if info.num_classes != n:
        raise UsageError(f"--dataset {dataset} has {info.num_classes} classes but the checkpoint's "
                         f"{loaded.config.variant} predicts {n}")
    if tuple(info.class_names) != loaded.class_names:
        print(f"warning: the checkpoint's class names differ from {dataset}'s; reporting the checkpoint's",
              file=sys.stderr)
    split = config.split or info.eval_split
    if split not in info.splits:
        raise UsageError(f"--split {split}: {dataset} has splits {', '.join(info.splits)}")
    try:
        source = data.load_split(dataset, split, data_dir=data_dir, manual_dir=config.manual_dir)
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"--dataset {dataset} --split {split}: {e}") from e
    mesh = make_mesh()
    batch_size = config.batch_size or mesh.devices.size
    try:
        check_batch_size(batch_size, mesh)
    except ValueError as e:
        raise UsageError(str(e)) from e
    json_path = config.json_path or default_json_path(config.ckpt, dataset, split)
    saver = None
    if config.save_predictions:
        try:
            saver = PredictionSaver(config.save_predictions, config.num_pictures, loaded.class_names,
                                    loaded.convention)
        except OSError as e:
            raise UsageError(f"--save-predictions {config.save_predictions}: {e}") from e

    batches = eval_batches(source, batch_size=batch_size, convention=loaded.convention,
                           bucket_multiple=config.bucket_multiple, sharding=data_sharding(mesh))
    result = evaluate(loaded.model, loaded.params, batches, n, mesh=mesh, flip=config.flip,
                      scales=config.scales, on_batch=saver, progress=config.progress,
                      total=info.splits[split] if jax.process_count() == 1 else None)
    s = result.scores
    record = {
        "checkpoint": os.path.abspath(config.ckpt), "step": loaded.step, "dataset": dataset, "split": split,
        "commit": git_commit(), "variant": loaded.config.variant, "num_classes": n,
        "preprocessing": loaded.convention, "dtype": loaded.config.dtype, "num_images": result.num_images,
        "seconds": result.seconds, "images_per_s": _finite(result.images_per_s),
        "devices": int(mesh.devices.size), "batch_size": batch_size, "bucket_multiple": config.bucket_multiple,
        **{key: _finite(s[key]) for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")},
        "per_class_iu": {name: _finite(v) for name, v in zip(loaded.class_names, s["iu"])},
        "tta": {"flip": config.flip, "scales": list(config.scales)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if jax.process_index() == 0:
        print(f"{loaded.config.variant} step {loaded.step} on {dataset} {split}: {result.num_images} images, "
              f"{result.images_per_s:.1f} images/s ({result.seconds:.1f} s incl. compilation)")
        print(format_table(s, loaded.class_names))
        try:
            os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
            with open(json_path, "w") as f:
                json.dump(record, f, indent=2)
        except OSError as e:
            raise UsageError(f"--json {json_path}: {e}") from e
        print(f"results written to {json_path}")
    return record


def build_eval_parser(prog: str = "eval.py") -> ArgumentParser:
    """The ``eval.py`` command line."""
    parser = ArgumentParser(prog=prog, description="Evaluate an FCN checkpoint with the reference's metrics "
                            "(pixel acc., mean acc., mean IU, f.w. IU) at full resolution on all devices.")
    add_model_flags(parser)
    parser.add_argument("--dataset", help="dataset name, e.g. shapes or voc_segmentation/sbd_fcn "
                        "(default: the checkpoint's training dataset)")
    parser.add_argument("--split", help="split (default: the dataset's evaluation split)")
    parser.add_argument("--data-dir", help="dataset directory (default: the training run's, if it exists "
                        "here, else the data package's)")
    parser.add_argument("--manual-dir", help="directory with manually downloaded archives")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: number of devices)")
    parser.add_argument("--bucket-multiple", type=int, default=128,
                        help="images are padded to a multiple of this in each dimension (default: 128)")
    parser.add_argument("--save-predictions", metavar="DIR", help="save label PNGs and panels here")
    parser.add_argument("--num-pictures", type=int, default=20, metavar="N",
                        help="with --save-predictions: how many images (default: 20)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="results file (default: "
                        "CKPT/eval_<dataset>_<split>.json, or <weights stem>_eval_<dataset>_<split>.json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python eval.py ...``; returns the exit code (0, or 2 for a user error)."""
    parser = build_eval_parser()

    def run(args: argparse.Namespace) -> int:
        for flag, value in (("--batch-size", args.batch_size), ("--bucket-multiple", args.bucket_multiple),
                            ("--num-pictures", args.num_pictures)):
            if value is not None and value < 1:
                raise UsageError(f"{flag} must be at least 1, got {value}")
        run_eval(EvalConfig(**vars(args)))
        return 0

    return run_cli(run, parser, argv)
