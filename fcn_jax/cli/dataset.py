"""``python -m fcn_jax.dataset COMMAND`` / ``fcn-dataset``: dataset tools.

``export DATASET OUT_DIR`` writes a registered dataset as an image folder (layout in
:mod:`fcn_jax.data.to_folder`): ``classes.txt``, ``images/{train,val}/`` and palette-PNG
``masks/{train,val}/``; the training and evaluation tools read it back, and ``python -m fcn_jax.score``
scores predictions against its masks. The dataset is built first if needed. An export stopped by Ctrl-C,
SIGTERM or a full disk keeps its complete examples in ``OUT_DIR.partial``; the same command continues it.
Exit status 0; 1 when a file cannot be written; 2 for bad input; 130 / 143 when interrupted (one line on
stderr each).
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from fcn_jax.cli import ArgumentParser, UsageError, user_errors

PROG = "python -m fcn_jax.dataset"
EXPORT_PROG = f"{PROG} export"


def parse_splits(text: str) -> tuple[str, ...]:
    """``--splits``: comma-separated split names, e.g. 'train,validation'."""
    splits = tuple(s.strip() for s in text.split(","))
    if not all(splits):
        raise argparse.ArgumentTypeError(f"expected comma-separated split names, got {text!r}")
    return splits


def build_parser() -> ArgumentParser:
    """The ``fcn-dataset`` command line: one subcommand per tool (today ``export``)."""
    parser = ArgumentParser(
        prog=PROG,
        description="Dataset tools.",
        epilog="examples:\n"
               f"  {EXPORT_PROG} shapes/tiny /tmp/shapes_folder\n"
               f"  {EXPORT_PROG} --help\n"
               "exit status: 0 ok, 2 bad input (one line on stderr)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_export_parser(commands)
    return parser


def add_export_parser(commands: Any) -> ArgumentParser:
    """``export DATASET OUT_DIR``: the flags of the folder export (``commands``: ``add_subparsers``' result)."""
    from fcn_jax.data.to_folder import IMAGE_FORMATS
    parser = commands.add_parser(
        "export", prog=EXPORT_PROG, help="write a registered dataset as an image folder",
        description="Export a registered dataset (e.g. shapes/tiny, voc_segmentation/sbd_fcn) to the folder format:\n"
                    "OUT_DIR/classes.txt ('name R G B' per class, VOC colours, then 'void 224 224 192'),\n"
                    "OUT_DIR/images/{train,val}/<stem>.png|jpg and OUT_DIR/masks/{train,val}/<stem>.png (palette\n"
                    "PNGs: pixel index = class, 255 = void). The evaluation split is written as 'val'. The folder\n"
                    "appears only when complete (written as OUT_DIR.partial, then renamed); an export stopped by\n"
                    "Ctrl-C or a full disk keeps its complete examples there and the same command continues it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  %(prog)s shapes/tiny /tmp/shapes_folder\n"
               "  %(prog)s voc_segmentation/voc2012 data/voc_folder --data-dir data --image-format jpg\n"
               "exit status: 0 ok, 1 a file could not be written (a full disk), 2 bad input, 130/143 interrupted\n"
               "(one line on stderr)")
    parser.add_argument("dataset", metavar="DATASET", help="registered dataset name, e.g. shapes/tiny")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (must not exist or be empty, "
                        "unless --overwrite)")
    parser.add_argument("--data-dir", help="where the dataset is (or is built); default: tfds's")
    parser.add_argument("--splits", type=parse_splits, default=None, metavar="S[,S...]",
                        help="splits to write (default: the dataset's train and evaluation splits)")
    parser.add_argument("--image-format", choices=IMAGE_FORMATS, default="png",
                        help="image files: png (lossless, default) or jpg (quality 95, no chroma subsampling); masks are "
                        "always PNG")
    parser.add_argument("--limit", type=int, metavar="N", help="write only the first N examples of each split")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


@user_errors(EXPORT_PROG, interrupted="nothing was written")
def export(args: argparse.Namespace) -> int:
    """``export``: writes the folder and prints one summary line; returns 0 (bad input: 2, a file that cannot
    be written: 1, interrupted: 130 / 143; one line each)."""
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be at least 1, got {args.limit}")
    from fcn_jax.cli import fail, interrupted_code
    from fcn_jax.data.to_folder import ExportInterrupted, export_folder
    from fcn_jax.io import WriteError
    from fcn_jax.platform import quiet_third_party_logs
    quiet_third_party_logs()
    try:
        counts = export_folder(args.dataset, args.out_dir, data_dir=args.data_dir, splits=args.splits,
                               image_format=args.image_format, limit=args.limit, overwrite=args.overwrite,
                               progress=args.progress, log=print)
    except ExportInterrupted as e:
        sys.stdout.flush()
        return fail(EXPORT_PROG, f"interrupted by {signal.Signals(e.signum).name}; {e.message}",
                    code=interrupted_code(e.signum))
    except WriteError as e:
        sys.stdout.flush()
        return fail(EXPORT_PROG, str(e), code=1)
    written = ", ".join(f"{folder} {count} images" for folder, count in counts.items())
    print(f"wrote {args.out_dir} from {args.dataset}: classes.txt, {written} ({args.image_format}; "
          f"masks as palette PNGs)")
    return 0


COMMANDS = {"export": export}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 ok, 2 bad input, reported as one line on stderr)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error already reported on one line
        return int(e.code or 0)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
