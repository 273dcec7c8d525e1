"""``python -m fcn_jax.score PRED_DIR GT_DIR`` / ``fcn-score``: score saved label PNGs with the reference's metrics.

Prediction and ground-truth PNGs are matched by file stem; one confusion matrix over all of them gives
pixel accuracy, mean accuracy, mean IU, frequency-weighted IU and IU per class, as the reference's
``score.py`` computes them (see :mod:`fcn_jax.score` for the file formats and what counts). Prints the
table; ``--json FILE`` writes the scores. Exit status 0, or 2 for bad input (one line on stderr).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from fcn_jax.cli import ArgumentParser, UsageError, user_errors
from fcn_jax.io import write_json
from fcn_jax.score import score_dirs

PROG = "python -m fcn_jax.score"


def build_parser() -> ArgumentParser:
    """The ``fcn-score`` command line."""
    parser = ArgumentParser(
        prog=PROG,
        description="Score predicted label PNGs against ground-truth label PNGs (matched by file stem) with the\n"
                    "reference's score.py metrics: one confusion matrix over all images; pixel accuracy, mean\n"
                    "accuracy, mean IU, frequency-weighted IU and IU per class. Label PNGs: palette (index =\n"
                    "class) or 8/16-bit grayscale (value = class); RGB masks with --classes colours. Ground truth\n"
                    "255 is void (skipped); a prediction of 255 or outside 0..N-1 counts as wrong.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  %(prog)s out/predict data/folder/masks/val --classes data/folder/classes.txt\n"
               "  %(prog)s out/fcn8s VOC2012/SegmentationClass --num-classes 21 --json fcn8s.json\n"
               "prediction files without ground truth are ignored if named *_overlay.png, *_probs.png or\n"
               "*_panel.png (predict.py and eval.py write them), an error otherwise.\n"
               "exit status: 0 ok, 2 bad input (one line on stderr)")
    parser.add_argument("pred_dir", metavar="PRED_DIR", help="folder of predicted label PNGs")
    parser.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth label PNGs")
    parser.add_argument("--classes", metavar="FILE",
                        help="class list: one class per line, 'name' or 'name R G B' (line order = class "
                             "index), optionally a last line 'void R G B'; colours let RGB masks be read")
    parser.add_argument("--num-classes", type=int, metavar="N",
                        help="number of classes (default: the --classes count, else the largest label value "
                             "seen, 255 excluded, + 1)")
    parser.add_argument("--json", dest="json_path", metavar="FILE", help="also write the scores here as JSON")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def record(result: dict[str, Any], pred_dir: str, gt_dir: str, classes: str | None) -> dict[str, Any]:
    """The ``--json`` record of a :func:`fcn_jax.score.score_dirs` result (fractions; null for n/a)."""
    return {
        "pred_dir": os.path.abspath(pred_dir), "gt_dir": os.path.abspath(gt_dir),
        "classes_file": os.path.abspath(classes) if classes else None,
        "num_images": result["num_images"], "num_pixels": result["num_pixels"], "num_void": result["num_void"],
        "num_invalid": result["num_invalid"], "num_classes": result["num_classes"],
        **{key: _finite(result[key]) for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")},
        "per_class_iu": {name: _finite(v) for name, v in zip(result["class_names"], result["iu"])},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Scores, prints the summary and table, writes ``--json``; returns the JSON record."""
    from fcn_jax.data.base import DataError
    from fcn_jax.data.folder import read_classes
    from fcn_jax.metrics import format_table

    if args.num_classes is not None and not 1 <= args.num_classes <= 255:
        raise UsageError(f"--num-classes must be in 1..255 (255 is void), got {args.num_classes}")
    names = colours = void_colour = None
    if args.classes is not None:
        try:
            classes = read_classes(args.classes)
        except DataError as e:
            raise UsageError(f"--classes {e}") from None
        if args.num_classes is not None and args.num_classes != len(classes.names):
            raise UsageError(f"--num-classes {args.num_classes} but --classes {args.classes} lists "
                             f"{len(classes.names)} classes")
        names, colours, void_colour = classes.names, classes.colours, classes.void_colour
    result = score_dirs(args.pred_dir, args.gt_dir, num_classes=args.num_classes, class_names=names,
                        colours=colours, void_colour=void_colour, progress=args.progress)
    n = result["num_classes"]
    print(f"{args.pred_dir} against {args.gt_dir}: {result['num_images']} images, {result['num_pixels']} pixels "
          f"scored, {result['num_void']} void pixels skipped, {n} classes")
    if result["num_invalid"]:
        print(f"{result['num_invalid']} scored pixels predicted void (255) or outside 0..{n - 1}, counted as wrong")
    if result["ignored"]:
        print(f"ignored {len(result['ignored'])} prediction files without ground truth (*_overlay, *_probs, *_panel)")
    print(format_table(result, result["class_names"]))
    out = record(result, args.pred_dir, args.gt_dir, args.classes)
    if args.json_path:
        try:
            write_json(args.json_path, out)
        except OSError as e:
            raise UsageError(f"--json {args.json_path}: {e.strerror or e}") from None
        print(f"results written to {args.json_path}")
    return out


@user_errors(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input, reported as one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported on one line
        return int(e.code or 0)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
