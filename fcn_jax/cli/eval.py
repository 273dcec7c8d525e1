"""``eval.py`` / ``fcn-eval``: evaluate a checkpoint on a dataset split with the reference's metrics.

The variant, classes and preprocessing come from the checkpoint; the dataset defaults to the one the
run trained on, the split to its evaluation split. Prints the score table and writes a JSON record;
``--save-predictions`` writes label PNGs and image | truth | prediction panels.

Multi-modal and multi-task variants: the network input is composed from the example fields the run
trained on (``--inputs``; default: the run's, else the variant's: colour + log depth for
nyud-fcn32s-color-d, colour + HHA for nyud-fcn32s-color-hha), and a multi-head model (SIFT Flow) is
scored per head, each with its own table (semantic: also the mean IU over the classes present in the
ground truth, which the reference's solve.py recommends over score.py's mean IU there). A weights file
that records no preprocessing (a .caffemodel) is evaluated with the dataset's reference mean
(``caffe-siftflow`` on sift_flow, ``caffe-nyud`` on nyud, ...) unless ``--preprocessing`` says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from fcn_jax import platform
from fcn_jax.cli import ArgumentParser, UsageError, add_model_flags, load_ckpt, user_errors
from fcn_jax.evaluate import evaluate, local_rows, model_outputs
from fcn_jax.metrics import format_table
from fcn_jax.parallel import check_batch_size, data_sharding, make_mesh
from fcn_jax.io import write_json
from fcn_jax.models import resolve_inputs
from fcn_jax.models.outputs import label_fields
from fcn_jax.preprocess import CAFFE, CONVENTIONS, INPUTS, convention_family, dataset_convention, display_image

if TYPE_CHECKING:
    from fcn_jax.data.pipeline import EvalBatch
    from fcn_jax.loading import ModelInfo


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What ``eval.py`` evaluates, and how. None means: from the checkpoint / the dataset / defaults."""

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
    json_path: str | None = None
    progress: bool = True
    inputs: str | None = None  # None: the run's, else the variant's default
    preprocessing: str | None = None  # None: the checkpoint's (a weights file without one: the dataset's)


EXACT = 0  # --bucket-multiple exact


def parse_bucket(text: str) -> int:
    """``--bucket-multiple``: a positive integer, or 'exact' (returned as :data:`EXACT`)."""
    if text == "exact":
        return EXACT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'exact', got {text!r}")
    return value


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


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


class PredictionSaver:
    """``on_batch`` callback saving pictures of the first ``limit`` images to ``out_dir``:
    ``<name>.png`` (predicted labels, VOC palette PNG) and ``<name>_panel.png`` (image | truth | prediction)."""

    def __init__(self, out_dir: str, limit: int, class_names: Sequence[str], convention: str,
                 colours: Sequence[Sequence[int]] | None = None, inputs: str = "image"):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.limit, self.class_names, self.convention = out_dir, limit, class_names, convention
        self.colours, self.inputs = colours, inputs
        self.saved = 0

    def __call__(self, batch: EvalBatch, preds: np.ndarray) -> bool:
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
            colorize(pred, self.colours).save(os.path.join(self.out_dir, f"{stem}.png"))
            panel(display_image(images[row, :h, :w], self.convention, self.inputs), labels[row, :h, :w], pred,
                  self.class_names, self.colours).save(os.path.join(self.out_dir, f"{stem}_panel.png"))
            self.saved += 1
        return self.saved < self.limit


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


def _head_record(scores: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    return {**{key: _finite(scores[key]) for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "mean_iu_present")},
            "per_class_iu": {name: _finite(v) for name, v in zip(class_names, scores["iu"])}}


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """``eval.py``: evaluates a checkpoint on a dataset split, prints the table, writes and returns the
    JSON record. Raises :class:`UsageError` for anything the user can fix."""
    variables, model = load_ckpt(argparse.Namespace(ckpt=config.ckpt, step=config.step, dtype=config.dtype))
    from fcn_jax import data
    from fcn_jax.data.pipeline import eval_batches, example_sizes

    n = model.config.num_classes
    dataset = config.dataset or recorded_dataset(model)
    if dataset is None:
        raise UsageError("--dataset is required: the checkpoint does not record its training dataset")
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
        raise UsageError(f"--dataset {dataset}: {e}") from e
    if ds.num_classes != n:
        raise UsageError(f"--dataset {dataset} has {ds.num_classes} classes but the checkpoint's "
                         f"{model.config.variant} predicts {n}")
    variant = model.config.variant
    recorded_inputs = recorded.get("inputs")  # what the network was trained on, whatever the dataset
    try:
        inputs = resolve_inputs(config.inputs or (recorded_inputs if isinstance(recorded_inputs, str) else None),
                                variant)
    except ValueError as e:
        raise UsageError(str(e)) from None
    convention, convention_from = eval_convention(model, dataset, config.preprocessing)
    outputs = model_outputs(model.config.build(), n)  # the scored ones
    labels = label_fields(outputs)
    if tuple(ds.class_names) != model.class_names:
        print(f"warning: the checkpoint's class names differ from {dataset}'s; reporting the checkpoint's",
              file=sys.stderr)
    split = config.split or ds.eval_split
    if split not in ds.splits:
        raise UsageError(f"--split {split}: {dataset} has splits {', '.join(ds.splits)}")
    try:
        source = data.load_split(dataset, split, data_dir=data_dir, manual_dir=config.manual_dir, **options)
    except (ValueError, KeyError, OSError) as e:
        raise UsageError(f"--dataset {dataset} --split {split}: {e}") from e
    if len(source):  # the fields the variant needs (the input's, every head's labels), before compiling
        from fcn_jax.data.pipeline import read_fields
        try:
            read_fields(source[0], inputs, labels)
        except ValueError as e:
            raise UsageError(f"--dataset {dataset} does not fit {variant}: {e}") from None
    mesh = make_mesh()
    batch_size = config.batch_size or mesh.devices.size
    try:
        check_batch_size(batch_size, mesh)
    except ValueError as e:
        raise UsageError(str(e)) from e
    json_path = config.json_path or default_json_path(config.ckpt, dataset, split, model.step, config.flip,
                                                      config.scales)
    saver = None
    if config.save_predictions:
        try:
            saver = PredictionSaver(config.save_predictions, config.num_pictures, model.class_names,
                                    convention, model.colours, inputs)
        except OSError as e:
            raise UsageError(f"--save-predictions {config.save_predictions}: {e}") from e

    bucket = config.bucket_multiple
    if bucket is None:  # the run's own validation setting when it recorded one, else exact size
        recorded = model.training_config.get("eval_bucket_multiple")
        bucket = recorded if isinstance(recorded, int) and dataset == recorded_dataset(model) else EXACT
    bucket = None if bucket == EXACT else bucket
    sizes = None
    if bucket is None:
        sizes = example_sizes(source)
        if jax.process_index() == 0:
            distinct = len({tuple(s) for s in sizes.tolist()})
            print(f"exact-size evaluation: {len(sizes)} images in {distinct} distinct sizes "
                  f"(one compiled program each)")
    if jax.process_index() == 0 and (convention != model.preprocessing or inputs != "image"):
        print(f"input: {inputs}, preprocessing {convention} ({convention_from})")
    batches = eval_batches(source, batch_size=batch_size, convention=convention, bucket_multiple=bucket,
                           sizes=sizes, sharding=data_sharding(mesh), inputs=inputs, labels=labels)
    result = evaluate(model.config.build(), variables, batches, n, mesh=mesh, flip=config.flip,
                      scales=config.scales, on_batch=saver, progress=config.progress,
                      total=ds.splits[split] if jax.process_count() == 1 else None)
    s = result.scores
    names = {o.name: o.class_names(model.class_names) for o in outputs}
    record = {
        "checkpoint": os.path.abspath(config.ckpt), "step": model.step, "dataset": dataset, "split": split,
        "commit": platform.git_commit(), "variant": variant, "num_classes": n,
        "preprocessing": convention, "inputs": inputs, "dtype": model.config.dtype, "num_images": result.num_images,
        "seconds": result.seconds, "images_per_s": _finite(result.images_per_s),
        "devices": int(mesh.devices.size), "batch_size": batch_size, "bucket_multiple": bucket,
        **_head_record(s, model.class_names),  # the (first) head's: SIFT Flow's semantic
        "tta": {"flip": config.flip, "scales": list(config.scales)},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if len(outputs) > 1:
        record["heads"] = {o.name: dict(_head_record(result.heads[o.name].scores, names[o.name]),
                                        num_classes=o.classes, labels=o.label_field) for o in outputs}
    if jax.process_index() == 0:
        print(f"{variant} step {model.step} on {dataset} {split}: {result.num_images} images, "
              f"{result.images_per_s:.1f} images/s ({result.seconds:.1f} s incl. compilation)")
        if len(outputs) == 1:
            print(format_table(s, model.class_names))
        else:
            for o in outputs:
                print(f"\n{o.name} head ({o.classes} classes, labels '{o.label_field}'):")
                print(format_table(result.heads[o.name].scores, names[o.name], present=True))
        try:
            write_json(json_path, record)
        except OSError as e:
            raise UsageError(f"--json {json_path}: {e}") from e
        print(f"results written to {json_path}")
    return record


def build_parser(prog: str = "eval.py") -> ArgumentParser:
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
    parser.add_argument("--void-value", type=int, metavar="V", help="folder: datasets: mask value of ignored "
                        "pixels (default: the training run's on its own dataset, else 255)")
    parser.add_argument("--binary-masks", action=argparse.BooleanOptionalAction, default=None,
                        help="folder: datasets: masks are 0 = background, anything else = class 1 (default: "
                        "the training run's setting on its own dataset)")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: number of devices)")
    parser.add_argument("--bucket-multiple", type=parse_bucket, default=None, metavar="N|exact",
                        help="pad images to a multiple of N in each dimension and batch them together: compiles "
                        "fewer programs, but results differ from the reference (padding changes the activations); "
                        "'exact': each image at its own size, batched only with images of the same size. Default: "
                        "the training run's validation setting on its own dataset, else exact")
    parser.add_argument("--inputs", choices=INPUTS, help="example fields forming the network input (default: the "
                        "training run's, else the variant's: image; image+depth for nyud-fcn32s-color-d, image+hha "
                        "for nyud-fcn32s-color-hha)")
    parser.add_argument("--preprocessing", choices=CONVENTIONS, help="input convention (default: the checkpoint's; "
                        "a weights file recording none, e.g. a .caffemodel, takes the dataset's reference mean)")
    parser.add_argument("--save-predictions", metavar="DIR", help="save label PNGs and panels here")
    parser.add_argument("--num-pictures", type=int, default=20, metavar="N",
                        help="with --save-predictions: how many images (default: 20)")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="results file (default: "
                        "CKPT/eval_<dataset>_<split>_step<N>[_flip][_scales...].json, or next to a weights file "
                        "<weights stem>_eval_<dataset>_<split>[_flip][_scales...].json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@user_errors("eval.py", interrupted="no results were written")
def main(argv: Sequence[str] | None = None) -> int:
    """``python eval.py ...``; returns the exit code (0, or 2 for a user error)."""
    args = build_parser().parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--num-pictures", args.num_pictures)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    platform.setup(verbose=args.verbose)
    if not args.progress:
        from fcn_jax import data
        data.disable_progress_bars()
    run_eval(EvalConfig(**{k: v for k, v in vars(args).items() if k != "verbose"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
