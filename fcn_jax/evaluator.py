"""The evaluator: a model over a dataset split with the reference's metrics, the one that in-training
validation and ``eval.py`` both use.

- :class:`Evaluator`: a split's batches (exact size by default, each image at its own size as the
  reference; or padded into shape buckets), planned once, run through :func:`fcn_jax.evaluate.evaluate`
  for given variables; returns the :class:`~fcn_jax.evaluate.EvalResult`.
- :class:`Pictures`: the ``on_batch`` collector of image | truth | prediction panels for the first images,
  kept in memory (TensorBoard) and/or saved as files with the label PNGs (``--save-predictions``), each
  image's pair written whole and recorded in ``.fcn-eval.jsonl`` there, so that a run continues an
  interrupted one.
- :func:`evaluate_checkpoint`: ``eval.py``'s whole job as a library function: a checkpoint and an
  :class:`EvalConfig` -> the printed tables and the JSON record (:func:`head_record` per output).
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.sharding import Mesh

from fcn_jax import platform
from fcn_jax.evaluate import EvalResult, evaluate, local_rows, model_outputs
from fcn_jax.io import Manifest, WriteError, atomic_group, error_text, is_full_disk, output_manifest, write_json
from fcn_jax.metrics import format_table
from fcn_jax.models import maskable, resolve_inputs
from fcn_jax.models.outputs import label_fields
from fcn_jax.parallel import check_batch_size, data_sharding, make_mesh
from fcn_jax.preprocess import CAFFE, convention_family, dataset_convention, display_image

if TYPE_CHECKING:
    from fcn_jax.data.pipeline import EvalBatch
    from fcn_jax.loading import ModelInfo


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message is one line naming the flag or file."""


class EvalInterrupted(KeyboardInterrupt):
    """An evaluation stopped by SIGINT / SIGTERM (``args[0]``: the signal number) after it could have written
    something; :attr:`message` says truthfully what is complete."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum, message)
        self.signum, self.message = signum, message


PREDICTIONS_MANIFEST = ".fcn-eval.jsonl"  # in --save-predictions: the settings, then one line per image saved


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What ``eval.py`` (:func:`evaluate_checkpoint`) evaluates, and how. None means: from the checkpoint / the dataset / defaults."""

    ckpt: str
    step: str | int = "best"
    dataset: str | None = None
    split: str | None = None
    data_dir: str | None = None
    manual_dir: str | None = None
    void_value: int | None = None  # folder datasets; None: the run's setting on its own dataset, else 255
    binary_masks: bool | None = None  # folder datasets; None: the run's setting on its own dataset, else False
    batch_size: int | None = None
    bucket_multiple: int | None = None  # None: the run's validation setting, else exact; 0 (EXACT): exact
    dtype: str | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)
    save_predictions: str | None = None
    num_pictures: int = 20
    overwrite: bool = False  # replace --save-predictions files made with other settings (or with no record)
    json_path: str | None = None
    progress: bool = True
    inputs: str | None = None  # None: the run's, else the variant's default
    preprocessing: str | None = None  # None: the checkpoint's (a weights file without one: the dataset's)


EXACT = 0  # --bucket-multiple exact


def recorded_dataset(info: ModelInfo) -> str | None:
    """The training dataset recorded in a checkpoint (``config.dataset``: a name or ``{'name': ...}``)."""
    dataset = info.training_config.get("dataset")
    if isinstance(dataset, Mapping):
        dataset = dataset.get("name")
    return dataset if isinstance(dataset, str) else None


def default_json_path(ckpt: str, dataset: str, split: str, step: int | None = None, flip: bool = False,
                      scales: Sequence[float] = (1.0,)) -> str:
    """Where results go without ``--json``: inside a checkpoint directory, or next to a weights file,
    named by dataset, split, step and test-time augmentation so that evaluations of other steps or
    settings never replace each other (``eval_shapes_validation_step2500_flip_scales0.5-1-1.5.json``).
    A folder dataset is named by its directory (``folder:/data/cells`` -> ``folder-cells``)."""
    if dataset.startswith("folder:"):
        dataset = "folder-" + (os.path.basename(os.path.normpath(dataset[len("folder:"):])) or "root")
    tags = ([] if step is None else [f"step{step}"]) + (["flip"] if flip else [])
    if tuple(scales) != (1.0,):
        tags.append("scales" + "-".join(f"{s:g}" for s in scales))
    name = "_".join([f"eval_{dataset.replace('/', '-')}_{split}"] + tags) + ".json"
    if os.path.isdir(ckpt):
        return os.path.join(ckpt, name)
    return f"{os.path.splitext(ckpt)[0]}_{name}"


class Pictures:
    """``on_batch`` callback of :func:`fcn_jax.evaluate.evaluate` keeping image | truth | prediction panels
    ((H, W, 3) uint8, in :attr:`panels`) of the first ``limit`` images; with ``out_dir`` it also writes
    ``<name>.png`` (predicted labels, palette PNG) and ``<name>_panel.png`` there (a name that repeats gets
    ``_2``, ...), the pair written whole (:func:`fcn_jax.io.atomic_group`), and keeps no panels in memory.
    With ``manifest`` each saved pair is recorded there, and images it records as complete are skipped.
    :attr:`saved` counts the complete images (skipped ones included), :attr:`skipped` those skipped.
    A pair that cannot be written raises :class:`~fcn_jax.io.WriteError` (one line, what is complete),
    leaving no part of it. ``title``: a caption prefix."""

    def __init__(self, limit: int, class_names: Sequence[str], convention: str,
                 colours: Sequence[Sequence[int]] | None = None, inputs: str = "image", *,
                 out_dir: str | None = None, title: str | None = None, manifest: Manifest | None = None):
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
        self.limit, self.class_names, self.convention, self.colours = limit, class_names, convention, colours
        self.inputs, self.out_dir, self.title, self.manifest = inputs, out_dir, title, manifest
        self.panels: list[np.ndarray] = []
        self.saved = self.skipped = 0
        recorded = {} if manifest is None else manifest.entries
        self._used = {e["stem"] for e in recorded.values() if isinstance(e.get("stem"), str)}

    def __call__(self, batch: EvalBatch, preds: np.ndarray) -> bool:
        from fcn_jax.viz import colorize, panel
        images, labels = local_rows(batch.image), local_rows(batch.label)
        for row, index in enumerate(np.asarray(batch.indices)):
            if index < 0 or self.saved >= self.limit:
                continue
            key = str(int(index))
            if self.out_dir is not None and self.manifest is not None and self.manifest.complete(key) is not None:
                self.saved += 1
                self.skipped += 1
                continue
            h, w = (int(v) for v in np.asarray(batch.sizes)[row])
            pred = preds[row, :h, :w]
            title = None if self.title is None else f"{self.title}, validation image {int(index)}"
            picture = panel(display_image(images[row, :h, :w], self.convention, self.inputs), labels[row, :h, :w],
                            pred, self.class_names, self.colours, title)
            if self.out_dir is None:
                self.panels.append(np.asarray(picture.convert("RGB")))
                self.saved += 1
            else:
                name = batch.names[row]
                name = name.decode() if isinstance(name, bytes) else str(name)
                self._save(key, name, colorize(pred, self.colours), picture)  # counts it once in place
        return self.saved < self.limit

    def _save(self, key: str, name: str, label: Any, picture: Any) -> None:
        """Writes image ``key``'s label PNG and panel as one group, recorded in the manifest once in place."""
        entry = None if self.manifest is None else self.manifest.entries.get(key)
        if entry is not None and isinstance(entry.get("stem"), str):
            stem = entry["stem"]
        else:
            base = os.path.splitext(os.path.basename(name))[0] or f"{int(key):06d}"
            stem, k = base, 1
            while stem in self._used:
                k += 1
                stem = f"{base}_{k}"
            self._used.add(stem)
        targets = [os.path.join(self.out_dir, f"{stem}.png"), os.path.join(self.out_dir, f"{stem}_panel.png")]
        def record() -> None:
            if self.manifest is not None:
                self.manifest.add(key, targets, stem=stem, name=name)
            self.saved += 1  # inside the group's commit: an interrupt never leaves it uncounted

        try:
            with atomic_group(targets, record) as temps:
                label.save(temps[0], format="PNG")
                picture.save(temps[1], format="PNG")
        except OSError as e:  # a full disk, a vanished or read-only directory
            again = "" if self.manifest is None else "; free space and run the same command again to continue" \
                if is_full_disk(e) else "; run the same command again to continue"
            raise WriteError(f"--save-predictions {self.out_dir}: {error_text(e)}; {self.saved} of {self.limit} "
                             f"predictions are complete there{again}") from e


class Evaluator:
    """A split evaluated the same way at every call: ``source`` (a random-access split of examples),
    batches of ``batch_size`` (default: the device count) in ``convention`` with the fields ``inputs``,
    each image at its own size (``bucket_multiple`` None: images of one size batched together, as the
    reference) or padded to multiples of ``bucket_multiple``; ``flip`` / ``scales`` test-time augmentation.
    The exact-size plan reads every image's size once, at the first call. Padded batches of a
    ``registry.maskable`` variant are masked to each image's size (:attr:`masked`), so they predict what
    the exact-size plan does from a few compiled programs; other variants' padded images see the filler.

    ``evaluator(variables, pictures=None, progress=True, total=None, desc='eval', leave=True)`` ->
    :class:`~fcn_jax.evaluate.EvalResult` of every evaluated output of ``model``.
    """

    def __init__(self, model: Any, source: Any, *, mesh: Mesh | None = None, batch_size: int | None = None,
                 convention: str = CAFFE, bucket_multiple: int | None = None, inputs: str = "image",
                 flip: bool = False, scales: Sequence[float] = (1.0,)):
        self.model, self.source = model, source
        self.mesh = make_mesh() if mesh is None else mesh
        self.batch_size = batch_size or int(self.mesh.devices.size)
        self.convention, self.bucket_multiple, self.inputs = convention, bucket_multiple, inputs
        self.flip, self.scales = flip, tuple(scales)
        self.num_classes = int(model.num_classes)
        self.outputs = model_outputs(model, self.num_classes)
        variant = getattr(model, "variant", None)
        #: padded batches run masked to each image's own size (same predictions as exact size)
        self.masked = bucket_multiple is not None and variant is not None and maskable(variant)
        self._sizes: np.ndarray | None = None

    def sizes(self) -> np.ndarray:
        """(N, 2) every image's (H, W), read once."""
        from fcn_jax.data.pipeline import example_sizes
        if self._sizes is None:
            self._sizes = example_sizes(self.source)
        return self._sizes

    def __call__(self, variables: Any, *, pictures: Callable[[Any, np.ndarray], bool | None] | None = None,
                 progress: bool = True, total: int | None = None, desc: str = "eval",
                 leave: bool = True) -> EvalResult:
        from fcn_jax.data.pipeline import eval_batches
        sizes = self.sizes() if self.bucket_multiple is None else None
        batches = eval_batches(self.source, batch_size=self.batch_size, convention=self.convention,
                               bucket_multiple=self.bucket_multiple, sizes=sizes,
                               sharding=data_sharding(self.mesh), inputs=self.inputs,
                               labels=label_fields(self.outputs))
        return evaluate(self.model, variables, batches, self.num_classes, mesh=self.mesh, flip=self.flip,
                        scales=self.scales, mask=self.masked, on_batch=pictures, progress=progress, total=total,
                        desc=desc, leave=leave)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def head_record(scores: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """One output's scores as the JSON record carries them (non-finite values as null)."""
    return {**{key: _finite(scores[key]) for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "mean_iu_present")},
            "per_class_iu": {name: _finite(v) for name, v in zip(class_names, scores["iu"])}}


def eval_convention(model: ModelInfo, dataset: str, requested: str | None) -> tuple[str, str]:
    """(convention, why): ``requested``; else the checkpoint's; but a weights file that records no
    convention (a .caffemodel: plain 'caffe' by its format) takes the dataset's reference mean (same family)."""
    if requested is not None:
        return requested, "--preprocessing"
    recorded = model.preprocessing
    guessed = model.meta.get("format") != "checkpoint" and model.meta.get("preprocessing_from") not in (
        "file metadata", "argument")
    reference = dataset_convention(dataset)
    if guessed and recorded == CAFFE and reference is not None and reference != recorded \
            and convention_family(reference) == convention_family(recorded):
        return reference, f"the reference's mean for {dataset.partition('/')[0]}; the weights record none"
    return recorded, "the checkpoint's"


def _record(config: EvalConfig, model: ModelInfo, dataset: str, split: str, result: EvalResult,
            outputs: Sequence[Any], *, convention: str, inputs: str, devices: int, batch_size: int,
            bucket: int | None, masked: bool) -> dict[str, Any]:
    """The JSON record of an evaluation: what was evaluated and how, the main output's scores at the top
    level, every scored output's under 'heads' when there are several."""
    record = {
        "checkpoint": os.path.abspath(config.ckpt), "step": model.step, "dataset": dataset, "split": split,
        "commit": platform.git_commit(), "variant": model.config.variant, "num_classes": model.config.num_classes,
        "preprocessing": convention, "inputs": inputs, "dtype": model.config.dtype, "num_images": result.num_images,
        "seconds": result.seconds, "images_per_s": _finite(result.images_per_s),
        "devices": devices, "batch_size": batch_size, "bucket_multiple": bucket, "masked": masked,
        **head_record(result.scores, model.class_names),  # the main output's: SIFT Flow's semantic
        "tta": {"flip": config.flip, "scales": list(config.scales)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(outputs) > 1:
        record["heads"] = {o.name: dict(head_record(result.heads[o.name].scores, o.class_names(model.class_names)),
                                        num_classes=o.classes, labels=o.label_field) for o in outputs}
    return record


def _print_tables(result: EvalResult, outputs: Sequence[Any], model: ModelInfo, dataset: str, split: str,
                  log: Callable[[str], None]) -> None:
    """The summary line and the score table of each scored output."""
    log(f"{model.config.variant} step {model.step} on {dataset} {split}: {result.num_images} images, "
        f"{result.images_per_s:.1f} images/s ({result.seconds:.1f} s incl. compilation)")
    if len(outputs) == 1:
        log(format_table(result.scores, model.class_names))
        return
    for o in outputs:
        log(f"\n{o.name} head ({o.classes} classes, labels '{o.label_field}'):")
        log(format_table(result.heads[o.name].scores, o.class_names(model.class_names), present=True))


def evaluate_checkpoint(config: EvalConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """``eval.py``: evaluates a checkpoint on a dataset split, prints (``log``) the table, writes and returns
    the JSON record. Raises :class:`EvalError` (one line naming the flag) for anything the user can fix,
    :class:`~fcn_jax.io.WriteError` (one line) for results that cannot be written (a full disk), and
    :class:`EvalInterrupted` for SIGINT / SIGTERM once predictions may have been written.

    ``--save-predictions`` files are checked against the settings recorded there before anything runs:
    the same settings continue (images recorded as complete are skipped), others are refused unless
    ``config.overwrite``."""
    from fcn_jax import data
    from fcn_jax.loading import load
    if config.void_value is not None and not 0 <= config.void_value <= 255:
        raise EvalError(f"--void-value must be in 0..255 (masks are 8-bit), got {config.void_value}")
    if config.num_pictures < 1:
        raise EvalError(f"--num-pictures must be at least 1, got {config.num_pictures}")
    try:
        variables, model = load(config.ckpt, step=config.step, dtype=config.dtype)
    except ValueError as e:
        raise EvalError(f"--ckpt {e}") from None

    n = model.config.num_classes
    dataset = config.dataset or recorded_dataset(model)
    if dataset is None:
        raise EvalError("--dataset is required: the checkpoint does not record its training dataset")
    recorded_dir = model.training_config.get("data_dir")
    data_dir = config.data_dir or (recorded_dir if isinstance(recorded_dir, str) and os.path.isdir(recorded_dir)
                                   else None)
    own = dataset == recorded_dataset(model)
    recorded = model.training_config
    options = {"void": config.void_value if config.void_value is not None else
               recorded.get("void_value", 255) if own else 255,
               "binary": config.binary_masks if config.binary_masks is not None else
               bool(recorded.get("binary_masks", False)) if own else False}
    try:
        ds = data.dataset_meta(dataset, data_dir=data_dir, progress=config.progress, **options)
    except (ValueError, KeyError, OSError) as e:
        raise EvalError(f"--dataset {dataset}: {e}") from e
    if ds.num_classes != n:
        raise EvalError(f"--dataset {dataset} has {ds.num_classes} classes but the checkpoint's "
                         f"{model.config.variant} predicts {n}")
    variant = model.config.variant
    recorded_inputs = recorded.get("inputs")  # what the network was trained on, whatever the dataset
    try:
        inputs = resolve_inputs(config.inputs or (recorded_inputs if isinstance(recorded_inputs, str) else None),
                                variant)
    except ValueError as e:
        raise EvalError(str(e)) from None
    convention, convention_from = eval_convention(model, dataset, config.preprocessing)
    outputs = model_outputs(model.config.build(), n)  # the scored ones
    if tuple(ds.class_names) != model.class_names:
        print(f"warning: the checkpoint's class names differ from {dataset}'s; reporting the checkpoint's",
              file=sys.stderr)
    split = config.split or ds.eval_split
    if split not in ds.splits:
        raise EvalError(f"--split {split}: {dataset} has splits {', '.join(ds.splits)}")
    try:
        source = data.load_split(dataset, split, data_dir=data_dir, manual_dir=config.manual_dir, **options)
    except (ValueError, KeyError, OSError) as e:
        raise EvalError(f"--dataset {dataset} --split {split}: {e}") from e
    if len(source):  # the fields the variant needs (the input's, every head's labels), before compiling
        from fcn_jax.data.pipeline import read_fields
        try:
            read_fields(source[0], inputs, label_fields(outputs))
        except ValueError as e:
            raise EvalError(f"--dataset {dataset} does not fit {variant}: {e}") from None
    mesh = make_mesh()
    batch_size = config.batch_size or mesh.devices.size
    try:
        check_batch_size(batch_size, mesh)
    except ValueError as e:
        raise EvalError(str(e)) from e
    json_path = config.json_path or default_json_path(config.ckpt, dataset, split, model.step, config.flip,
                                                      config.scales)
    bucket = config.bucket_multiple
    if bucket is None:  # the run's own validation setting when it recorded one, else exact size
        recorded = model.training_config.get("eval_bucket_multiple")
        bucket = recorded if isinstance(recorded, int) and dataset == recorded_dataset(model) else EXACT
    bucket = None if bucket == EXACT else bucket
    pictures = None
    if config.save_predictions:
        settings = {"ckpt": os.path.realpath(config.ckpt), "step": model.step, "dataset": dataset, "split": split,
                    **options, "dtype": model.config.dtype, "preprocessing": convention, "inputs": inputs,
                    "bucket_multiple": bucket, "flip": config.flip, "scales": list(config.scales)}
        manifest = check_predictions_dir(config.save_predictions, settings, config.overwrite)
        lead = jax.process_index() == 0  # the one process that keeps the record
        try:
            pictures = Pictures(min(config.num_pictures, len(source)), model.class_names, convention,
                                model.colours, inputs, out_dir=config.save_predictions,
                                manifest=manifest if lead else None)
        except OSError as e:
            raise EvalError(f"--save-predictions {config.save_predictions}: {e}") from e
        if lead and (config.overwrite or not manifest.exists):
            try:
                manifest.begin(settings)
            except OSError as e:
                raise WriteError(f"--save-predictions {config.save_predictions}: {error_text(e)}; no "
                                 f"predictions were written") from e
    json_written = False
    try:
        evaluator = Evaluator(model.config.build(), source, mesh=mesh, batch_size=batch_size, convention=convention,
                              bucket_multiple=bucket, inputs=inputs, flip=config.flip, scales=config.scales)
        if bucket is None and jax.process_index() == 0:
            sizes = evaluator.sizes()
            distinct = len({tuple(s) for s in sizes.tolist()})
            log(f"exact-size evaluation: {len(sizes)} images in {distinct} distinct sizes (one compiled program "
                f"each)")
        elif jax.process_index() == 0:
            log(f"bucketed evaluation (multiple {bucket}): " + (
                "each image masked to its own size, same predictions as exact size" if evaluator.masked else
                f"{model.config.variant} cannot be masked to each image's size, so the padding changes its "
                f"predictions (--bucket-multiple exact for the reference's)"))
        if jax.process_index() == 0 and (convention != model.preprocessing or inputs != "image"):
            log(f"input: {inputs}, preprocessing {convention} ({convention_from})")
        result = evaluator(variables, pictures=pictures, progress=config.progress,
                           total=ds.splits[split] if jax.process_count() == 1 else None)
        record = _record(config, model, dataset, split, result, outputs, convention=convention, inputs=inputs,
                         devices=int(mesh.devices.size), batch_size=batch_size, bucket=bucket,
                         masked=evaluator.masked)
        if jax.process_index() == 0:
            _print_tables(result, outputs, model, dataset, split, log)
            if pictures is not None:
                skipped = f" ({pictures.skipped} complete already, skipped)" if pictures.skipped else ""
                log(f"predictions written to {config.save_predictions}: {pictures.saved} images{skipped}")
            try:
                write_json(json_path, record)
            except OSError as e:
                saved = "" if pictures is None else \
                    f"; the {pictures.saved} predictions in {config.save_predictions} are complete"
                raise WriteError(f"--json {json_path}: {error_text(e)}{saved}") from e
            json_written = True
            log(f"results written to {json_path}")
        return record
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else int(signal.SIGINT)
        written = f"results written to {json_path}" if json_written else "no results file was written"
        if pictures is not None:
            written = (f"{pictures.saved} of {pictures.limit} predictions are complete in {config.save_predictions}, "
                       f"{written}" + ("" if json_written else "; run the same command again to continue"))
        raise EvalInterrupted(signum, written) from None


def check_predictions_dir(out_dir: str, settings: Mapping[str, Any], overwrite: bool) -> Manifest:
    """The manifest of ``--save-predictions`` ``out_dir`` (read, not yet written); raises :class:`EvalError`
    when the directory holds predictions made with other ``settings``, or label PNGs without a record of
    the run that made them, unless ``overwrite``."""
    try:
        return output_manifest("--save-predictions", out_dir, PREDICTIONS_MANIFEST, settings, overwrite,
                               results="predictions", files="PNG files", suffixes=(".png",))
    except ValueError as e:
        raise EvalError(str(e)) from None
