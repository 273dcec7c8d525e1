"""``predict.py`` / ``fcn-predict``: segment images of any size and mode, one at a time at full resolution.

For every input image ``<stem>.<ext>`` the output directory gets

- ``<stem>.png``: the label map as a palette PNG (pixel value = class index, VOC colours);
- ``<stem>_overlay.png``: the image blended with the class colours, with a legend of the classes present;
- with ``--probs``: ``<stem>_probs.npy``, per-class probabilities (H, W, C), float16 by default
  (``--probs-dtype float32``), averaged over the test-time augmentations if any.

Images whose long side exceeds ``--max-side`` (default 1024; 0: never) run as overlapping ``--tile``
x ``--tile`` windows (default 512; neighbours share at least ``--overlap``, default 1/3, of a window)
whose class scores are averaged (sliding-window inference, see :mod:`fcn_jax.inference`), so memory
stays bounded however large the image: the memory of a run is that of the largest of a ``--max-side``
square image and a ``--tile`` window. Smaller images run whole, exactly as before. Test-time
augmentation (``--flip``, ``--scales``) applies to each window (and enlarges what runs: at ``--scales
...,1.5`` a 512 window runs at 768). Full width fcn8s, ``--flip --scales 0.5,1,1.5``, on the CPU: about
5 GB at 512, 11 GB at 1024.

Stems that repeat (``a.jpg`` and ``a.png``, or equal names in two directories) get ``_2``, ``_3``, ...
Inputs are never overwritten or re-read: ``--out`` may not be a directory that holds inputs, and files a
previous run wrote there are replaced only with ``--overwrite``.
Any PIL-readable image works: EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and
float images become RGB (16-bit and wider scaled to 8 bits); transparent pixels are composited over
white. A file that cannot be read or segmented (also one that runs out of device or host memory) gets
one line ``predict.py: error: FILE: reason`` on stderr and the others still run. Exit code: 0 if every
image was segmented, 1 if any failed, 2 for a usage error (bad flag, checkpoint or output directory).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np

from fcn_jax import platform
from fcn_jax.cli import ArgumentParser, UsageError, add_model_flags, load_ckpt, user_errors
from fcn_jax.inference import MIN_TILE, Inference, load_image
from fcn_jax.viz import colorize, overlay

DEFAULT_MAX_SIDE, DEFAULT_TILE = 1024, 512
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")


def find_images(inputs: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """Yields ``(path, None)`` for each image to segment, or ``(input, reason)`` for an unusable input.

    Files are taken as given (whatever their extension); directories give their files with an image
    extension (not recursive), sorted.
    """
    for item in inputs:
        if os.path.isdir(item):
            files = sorted(f for f in os.listdir(item) if f.lower().endswith(IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(item, f)))
            if not files:
                yield item, "directory holds no image files"
            for name in files:
                yield os.path.join(item, name), None
        elif os.path.isfile(item):
            yield item, None
        else:
            yield item, "no such file or directory"


OUTPUT_SUFFIXES = (".png", "_overlay.png", "_probs.npy")


def check_out_dir(inputs: Sequence[str], out_dir: str, overwrite: bool) -> None:
    """Raises UsageError when writing to ``out_dir`` could overwrite or later re-read an input (``--out``
    is an input directory, or the directory of an input file), or replace earlier results (unless
    ``overwrite``)."""
    out = os.path.realpath(out_dir)
    for item in inputs:
        where = os.path.realpath(item if os.path.isdir(item) else os.path.dirname(os.path.abspath(item)))
        if where == out:
            raise UsageError(f"--out {out_dir} holds the input {item}: results written there could overwrite "
                             f"inputs and be read as inputs by the next run; choose another directory")
    if overwrite or not os.path.isdir(out_dir):
        return
    existing = sorted(f for f in os.listdir(out_dir) if f.endswith(OUTPUT_SUFFIXES))
    if existing:
        raise UsageError(f"--out {out_dir} already holds {len(existing)} result files (e.g. {existing[0]}); "
                         f"pass --overwrite to replace them, or choose another directory")


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


def predict_files(segment: Inference, inputs: Sequence[str], out_dir: str, *, probs: bool = False,
                  probs_dtype: str = "float16", alpha: float = 0.5, prog: str = "predict.py") -> int:
    """Segments every image of ``inputs`` into ``out_dir`` (see the module docstring for the files).

    Returns the number of inputs that failed (each reported as one line on stderr).
    """
    names, used, failures = segment.class_names, set(), 0
    for path, problem in find_images(inputs):
        image = None
        try:
            if problem:
                raise ValueError(problem)
            image = load_image(path)
            label, probabilities = segment.predict(image, probabilities=probs)
            stem = os.path.join(out_dir, _unique_stem(path, used))
            colorize(label, segment.colours).save(f"{stem}.png")
            overlay(image, label, names, alpha=alpha, colours=segment.colours).save(f"{stem}_overlay.png")
            if probabilities is not None:
                np.save(f"{stem}_probs.npy", probabilities.astype(probs_dtype))
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # unreadable, write failure, OOM
            failures += 1
            print(f"{prog}: error: {path}: {error_line(e, segment, image)}", file=sys.stderr)
            continue
        present = ", ".join(names[c] for c in np.unique(label))
        print(f"{path} -> {stem}.png ({image.shape[1]}x{image.shape[0]}: {present})")
    return failures


def error_line(error: BaseException, segment: Inference, image: np.ndarray | None) -> str:
    """One line for a failed image: the error's first line, and for running out of memory (XLA's
    RESOURCE_EXHAUSTED, MemoryError) what to change."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
        if isinstance(error, MemoryError):
            text = f"out of host memory ({text})" if lines else "out of host memory"
        if image is not None and segment.windows(*image.shape[:2]) is None:
            text += f"; set --max-side below {max(image.shape[:2])} to tile this image"
        else:
            text += "; try a smaller --tile"
    return text


def build_parser(prog: str = "predict.py") -> ArgumentParser:
    """The ``predict.py`` command line."""
    parser = ArgumentParser(prog=prog, description="Segment images with an FCN checkpoint: label PNGs "
                            "(VOC palette), overlays with a legend, optionally class probabilities.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or directories")
    add_model_flags(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; not a "
                        "directory of the inputs)")
    parser.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    parser.add_argument("--probs", action="store_true", help="also save <stem>_probs.npy (H, W, C)")
    parser.add_argument("--probs-dtype", choices=("float16", "float32"), default="float16",
                        help="dtype of the saved probabilities (default: float16)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, metavar="N",
                        help=f"tile images whose long side exceeds N pixels (sliding windows, bounded memory); "
                        f"0: never tile (default: {DEFAULT_MAX_SIDE})")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE, metavar="T",
                        help=f"window size of tiled images, at least 32 (default: {DEFAULT_TILE})")
    parser.add_argument("--overlap", type=float, default=1 / 3, metavar="F",
                        help="fraction of a window shared with its neighbour, in [0, 1) (default: 1/3)")
    return parser


@user_errors("predict.py", interrupted="results written so far are kept")
def main(argv: Sequence[str] | None = None) -> int:
    """``python predict.py ...``; returns the exit code (0 all done, 1 some images failed, 2 usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.alpha <= 1:
        raise UsageError(f"--alpha must lie in [0, 1], got {args.alpha}")
    if args.max_side < 0:
        raise UsageError(f"--max-side must be >= 0 (0: never tile), got {args.max_side}")
    if args.tile < MIN_TILE:
        raise UsageError(f"--tile must be >= {MIN_TILE}, got {args.tile}")
    if not 0 <= args.overlap < 1:
        raise UsageError(f"--overlap must lie in [0, 1), got {args.overlap}")
    check_out_dir(args.inputs, args.out, args.overwrite)
    platform.setup(verbose=args.verbose)
    variables, info = load_ckpt(args)
    segment = Inference.from_info(variables, info, flip=args.flip, scales=args.scales,
                                  tile=args.tile if args.max_side else None, overlap=args.overlap,
                                  max_side=args.max_side)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {args.out}: {e}") from e
    failures = predict_files(segment, args.inputs, args.out, probs=args.probs, probs_dtype=args.probs_dtype,
                             alpha=args.alpha, prog=parser.prog)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
