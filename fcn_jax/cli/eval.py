"""``eval.py`` / ``fcn-eval``: evaluate a checkpoint on a dataset split with the reference's metrics (the
command line of :func:`fcn_jax.evaluator.evaluate_checkpoint`).

The variant, classes and preprocessing come from the checkpoint; the dataset defaults to the one the
run trained on, the split to its evaluation split. Prints the score table and writes a JSON record;
``--save-predictions`` writes label PNGs and image | truth | prediction panels, each image's pair whole and
recorded in ``.fcn-eval.jsonl`` there: interrupted (Ctrl-C, SIGTERM), a run says how many are complete, and
the same command run again skips them; predictions of other settings are replaced only with
``--overwrite``. A file that cannot be written (a full disk) stops the run with one line and exit code 1.

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
import signal
import sys
from collections.abc import Sequence

from fcn_jax import platform
from fcn_jax.cli import ArgumentParser, UsageError, add_model_flags, fail, interrupted_code, user_errors
from fcn_jax.evaluator import EXACT, EvalConfig, EvalInterrupted, evaluate_checkpoint
from fcn_jax.io import WriteError
from fcn_jax.preprocess import CONVENTIONS, INPUTS


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
                        "pixels, 0..255 (default: the training run's on its own dataset, else 255)")
    parser.add_argument("--binary-masks", action=argparse.BooleanOptionalAction, default=None,
                        help="folder: datasets: masks are 0 = background, anything else = class 1 (default: "
                        "the training run's setting on its own dataset)")
    parser.add_argument("--batch-size", type=int, help="global batch size (default: number of devices)")
    parser.add_argument("--bucket-multiple", type=parse_bucket, default=None, metavar="N|exact",
                        help="pad images to a multiple of N in each dimension and batch them together: compiles "
                        "fewer programs; the reference-geometry networks are masked to each image's own size, so "
                        "they predict exactly as at exact size (one scale; with --scales the rescaled passes blend "
                        "the border), the BatchNorm / ResNet FCNs' predictions change with the padding; "
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
    parser.add_argument("--overwrite", action="store_true", help="with --save-predictions: replace predictions "
                        "made there with other settings; without it a run continues an interrupted one")
    parser.add_argument("--json", dest="json_path", metavar="PATH", help="results file (default: "
                        "CKPT/eval_<dataset>_<split>_step<N>[_flip][_scales...].json, or next to a weights file "
                        "<weights stem>_eval_<dataset>_<split>[_flip][_scales...].json)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@user_errors("eval.py", interrupted="no results were written")
def main(argv: Sequence[str] | None = None) -> int:
    """``python eval.py ...``; returns the exit code (0, 1 results not written, 2 user error, 130 / 143
    interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for flag, value in (("--batch-size", args.batch_size), ("--num-pictures", args.num_pictures)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if args.void_value is not None and not 0 <= args.void_value <= 255:
        raise UsageError(f"--void-value must be in 0..255 (masks are 8-bit), got {args.void_value}")
    platform.setup(verbose=args.verbose)
    if not args.progress:
        from fcn_jax import data
        data.disable_progress_bars()
    try:
        evaluate_checkpoint(EvalConfig(**{k: v for k, v in vars(args).items() if k != "verbose"}))
    except EvalInterrupted as e:
        sys.stdout.flush()
        return fail(parser.prog, f"interrupted by {signal.Signals(e.signum).name}; {e.message}",
                    code=interrupted_code(e.signum))
    except WriteError as e:
        sys.stdout.flush()
        return fail(parser.prog, str(e), code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
