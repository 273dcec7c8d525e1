"""Regenerates the README's pictures from a trained run.

After the README's first command (``python train.py --variant=fcn16s``, which leaves ``runs/fcn16s``)::

    python docs/make_pictures.py --workdir runs/fcn16s

writes, from the run's best checkpoint and its dataset's validation split (the embedded ``shapes``):

- ``docs/shapes_predictions.png``: image | ground truth | prediction panels of ``--num-images``
  validation images (the first ones whose ground truth holds at least ``--min-classes`` object
  classes, or ``--indices``), each titled with its mean IU, under a caption naming the model
  (variant, width, padding), the step, the checkpoint it came from and its validation scores;
- ``docs/learning_curves.png``: the run's ``metrics.jsonl`` (loss, learning rate, validation scores,
  IU per class);
- ``docs/examples/shapes_0.png`` ... : the first ``--examples`` validation images themselves, the inputs
  of the README's ``predict.py`` examples;
- with ``--overlays``, also ``docs/shapes_overlays.png``: those examples with the model's predictions
  overlaid (what ``predict.py`` writes as ``*_overlay.png``).

``--workdir`` takes anything :func:`fcn_jax.load_model` takes (a converted checkpoint too; then there
are no learning curves unless a ``metrics.jsonl`` sits beside it). ``--out DIR`` writes elsewhere;
``python docs/make_pictures.py --help`` lists every option. Only the public API is used:
``fcn_jax.load_model``, ``fcn_jax.Inference``, ``fcn_jax.data.load_split`` and ``fcn_jax.viz``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository's fcn_jax when run from a clone

import fcn_jax  # noqa: E402
from fcn_jax import data, viz  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/fcn16s",
                        help="training workdir, or any checkpoint (default: runs/fcn16s)")
    parser.add_argument("--step", default="best", help="'best' (default), 'latest' or a step number")
    parser.add_argument("--dataset", default=None, help="dataset (default: the one the run trained on, else shapes)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: the run's)")
    parser.add_argument("--split", default=None, help="split (default: the dataset's validation split)")
    parser.add_argument("--num-images", type=int, default=4, help="panels in the predictions picture (default: 4)")
    parser.add_argument("--min-classes", type=int, default=2,
                        help="pick images whose ground truth has at least this many object classes (default: 2)")
    parser.add_argument("--indices", default=None, help="comma-separated image indices instead of picking")
    parser.add_argument("--examples", type=int, default=3, help="example images to write to OUT/examples (default: 3)")
    parser.add_argument("--overlays", action="store_true", help="also write OUT/<dataset>_overlays.png")
    parser.add_argument("--out", default=HERE, help="output directory (default: this docs/ directory)")
    args = parser.parse_args(argv)
    if args.step not in ("best", "latest"):
        try:
            args.step = int(args.step)
        except ValueError:
            parser.error(f"--step must be 'best', 'latest' or a number, got {args.step!r}")
    if args.num_images < 1 or args.examples < 0:
        parser.error("--num-images must be >= 1 and --examples >= 0")
    return args


def shown_path(path: str) -> str:
    """``path`` as a reader should see it: relative to the current directory when inside it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def image_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(mean IU, pixel accuracy) of one image as ``score.py`` computes them (void skipped; mean IU over
    the classes in the ground truth or the prediction)."""
    valid = gt < num_classes
    hist = np.bincount(num_classes * gt[valid].astype(np.int64) + pred[valid], minlength=num_classes ** 2)
    hist = hist.reshape(num_classes, num_classes).astype(np.float64)
    diag, union = np.diag(hist), hist.sum(0) + hist.sum(1) - np.diag(hist)
    mean_iu = float(np.mean(diag[union > 0] / union[union > 0])) if (union > 0).any() else float("nan")
    pixel_acc = float(diag.sum() / hist.sum()) if hist.sum() else float("nan")
    return mean_iu, pixel_acc


def pick(source, count: int, min_classes: int, background: int | None, num_classes: int) -> list[int]:
    """The first ``count`` indices whose ground truth holds ``min_classes`` object classes (fewer
    classes allowed when too few images qualify: the first images then fill up)."""
    chosen = []
    for index in range(len(source)):
        label = np.asarray(source[index]["segmentation"])
        objects = {int(c) for c in np.unique(label) if c < num_classes and c != background}
        if len(objects) >= min_classes:
            chosen.append(index)
            if len(chosen) == count:
                return chosen
    rest = [i for i in range(len(source)) if i not in chosen]
    return sorted(chosen + rest[:count - len(chosen)])


def describe(info, step_requested) -> str:
    """'fcn16s (width 1/8, padding same), step 2500 (best) of runs/fcn16s'."""
    config = info.config
    width = f"1/{round(1 / config.width)}" if config.width < 1 and (1 / config.width).is_integer() else \
        f"{config.width:g}"
    which = f" ({step_requested})" if isinstance(step_requested, str) else ""
    step = f", step {info.step}{which}" if info.step is not None else ""
    return f"{config.variant} (width {width}, padding {config.padding}){step} of {shown_path(info.source)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model, variables, info = fcn_jax.load_model(args.workdir, step=args.step)
    trained = info.training_config
    dataset = args.dataset or trained.get("dataset") or "shapes"
    data_dir = args.data_dir or trained.get("data_dir")
    meta = data.dataset_meta(dataset, data_dir)
    if meta.num_classes != info.config.num_classes:
        raise SystemExit(f"{dataset} has {meta.num_classes} classes, the model {info.config.num_classes}")
    split = args.split or meta.eval_split
    source = data.load_split(dataset, split, data_dir)
    names, colours = info.class_names, info.colours
    background = viz.background_class(names)
    segment = fcn_jax.Inference(model, variables, info.preprocessing, class_names=names, colours=colours)
    name = os.path.basename(dataset.split(":")[-1].split("/")[0].rstrip("/")) or "dataset"
    os.makedirs(args.out, exist_ok=True)
    written = []

    # the predictions picture
    if args.indices:
        indices = [int(i) for i in args.indices.split(",")]
    else:
        indices = pick(source, args.num_images, args.min_classes, background, len(names))
    panels = []
    for index in indices:
        example = source[index]
        image, gt = np.asarray(example["image"]), np.asarray(example["segmentation"])
        pred = segment(image)
        mean_iu, pixel_acc = image_scores(gt, pred, len(names))
        file_name = example.get("file_name", "")
        file_name = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
        title = f"{dataset} {split} image {index}" + (f" ({file_name})" if file_name else "") + \
            f": mean IU {100 * mean_iu:.1f}%, pixel accuracy {100 * pixel_acc:.1f}%"
        panels.append(viz.panel(image, gt, pred, names, colours, title=title))
    caption = f"{describe(info, args.step)}, on {dataset} {split} images {', '.join(map(str, indices))}"
    scores = info.meta.get("metrics") or {}
    if isinstance(scores, dict) and "mean_iu" in scores:
        caption += (f". Whole {split} split at this step: mean IU {100 * scores['mean_iu']:.1f}%"
                    + (f", pixel accuracy {100 * scores['pixel_acc']:.1f}%" if "pixel_acc" in scores else ""))
    gap = 12
    body = viz.vstack(panels, gap=gap)
    grid = viz.vstack([viz.text_block(caption, body.width, 18), body], gap=gap // 2)
    path = os.path.join(args.out, f"{name}_predictions.png")
    grid.save(path, optimize=True)
    written.append(path)

    # the learning curves
    metrics = os.path.join(info.source if os.path.isdir(info.source) else os.path.dirname(info.source),
                           "metrics.jsonl")
    if os.path.exists(metrics):
        written.append(viz.plot_learning_curves(metrics, os.path.join(args.out, "learning_curves.png")))
    else:
        print(f"no {shown_path(metrics)}: no learning curves")

    # the example inputs (and, on request, their overlays)
    overlays = []
    if args.examples:
        os.makedirs(os.path.join(args.out, "examples"), exist_ok=True)
    for k in range(min(args.examples, len(source))):
        image = np.asarray(source[k]["image"])
        path = os.path.join(args.out, "examples", f"{name}_{k}.png")
        Image.fromarray(image).save(path)
        written.append(path)
        if args.overlays:
            label = segment(image)
            factor = viz.zoom_factor(*label.shape)  # whole-pixel enlargement, text drawn at full size
            big = lambda a: np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)  # noqa: E731
            overlays.append(viz.overlay(big(image), big(label), names, colours=colours))
    if overlays:
        path = os.path.join(args.out, f"{name}_overlays.png")
        row = viz.hstack(overlays, gap=gap)
        viz.vstack([viz.text_block(f"{describe(info, args.step)}: predictions on {dataset} {split} images "
                                   f"0-{len(overlays) - 1}", row.width, 18), row]).save(path, optimize=True)
        written.append(path)
    for path in written:
        print(f"wrote {shown_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
