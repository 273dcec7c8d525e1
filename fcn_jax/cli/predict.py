"""``predict.py`` / ``fcn-predict``: segment images of any size and mode, one at a time at full resolution.

For every input image ``<stem>.<ext>`` the output directory gets

- ``<stem>.png``: the label map as a palette PNG (pixel value = class index, VOC colours);
- ``<stem>_overlay.png``: the image blended with the class colours, with a legend of the classes present;
- with ``--probs``: ``<stem>_probs.npy``, per-class probabilities (H, W, C), float16 by default
  (``--probs-dtype float32``), averaged over the test-time augmentations if any.

``--ckpt`` may also be an ``.onnx`` file (``python -m fcn_jax.export ... --format onnx``): it runs on onnxruntime
at its exported size, larger images as windows of that size (:mod:`fcn_jax.onnx_model`).

Images whose long side exceeds ``--max-side`` (default 1024; 0: never) run as overlapping ``--tile``
x ``--tile`` windows (default 512; neighbours share at least ``--overlap``, default 1/3, of a window)
whose class scores are averaged (sliding-window inference, see :mod:`fcn_jax.inference`), so memory
stays bounded however large the image: the memory of a run is that of the largest of a ``--max-side``
square image and a ``--tile`` window. Smaller images run whole, exactly as before. Test-time
augmentation (``--flip``, ``--scales``) applies to each window (and enlarges what runs: at ``--scales
...,1.5`` a 512 window runs at 768). Full width fcn8s, ``--flip --scales 0.5,1,1.5``, on the CPU: about
5 GB at 512, 11 GB at 1024.

Stems that repeat (``a.jpg`` and ``a.png``, or equal names in two directories) get ``_2``, ``_3``, ...
Inputs are never overwritten or re-read: ``--out`` may not be a directory that holds inputs.

An image's files are a group, written whole: each file goes to a hidden temporary name beside its target,
the group is renamed into place once all of it is written, and only then is the image recorded as done in
``<out>/.fcn-predict.jsonl`` (the run's settings, then one line per image). Interrupted (Ctrl-C, SIGTERM),
a run leaves only complete groups and says how many; the same command run again continues: it skips the
images recorded as done (files present, sizes as recorded) and segments the others. Results made with other
settings (checkpoint, step, dtype, test-time augmentation, tiling, --probs, --alpha), or by a version that
kept no record, are replaced only with ``--overwrite``, which starts the record afresh. A write that fails
(a full disk) stops the run at once with one line naming ``--out`` and how many images are complete, and
leaves no empty or partial file; a run that completes no image removes the ``--out`` it created.
Any PIL-readable image works: EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and
float images become RGB (16-bit and wider scaled to 8 bits); transparent pixels are composited over
white. A file that cannot be read or segmented (also one that runs out of device or host memory) gets
one line ``predict.py: error: FILE: reason`` on stderr and the others still run. Exit code: 0 if every
image was segmented, 1 if any failed or results could not be written, 2 for a usage error (bad flag,
checkpoint or output directory, no image among the inputs), 130 / 143 when interrupted by SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from fcn_jax import onnx_model, platform
from fcn_jax.cli import ArgumentParser, UsageError, add_model_flags, fail, interrupted_code, load_ckpt, user_errors
from fcn_jax.inference import MIN_TILE, Inference, load_image
from fcn_jax.io import (Manifest, WriteError, atomic_group, error_text, is_full_disk, other_settings,
                        output_manifest)
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
MANIFEST = ".fcn-predict.jsonl"  # in --out: the settings, then one line per image whose results are complete


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes a run's results what they are (compared with those recorded in ``--out`` on a re-run)."""
    return {"ckpt": os.path.realpath(args.ckpt), "step": args.step, "dtype": args.dtype, "flip": args.flip,
            "scales": list(args.scales), "max_side": args.max_side, "tile": args.tile, "overlap": args.overlap,
            "probs": args.probs, "probs_dtype": args.probs_dtype if args.probs else None, "alpha": args.alpha}


def check_out_dir(inputs: Sequence[str], out_dir: str, overwrite: bool,
                  settings: dict[str, Any] | None = None) -> Manifest:
    """Raises UsageError when writing to ``out_dir`` could overwrite or later re-read an input (``--out``
    is an input directory, or the directory of an input file), or replace earlier results (unless
    ``overwrite``): results of other ``settings`` than the manifest there records, or result files without
    a manifest. Returns the manifest of ``out_dir`` (read, not yet written; absent for a new directory)."""
    out = os.path.realpath(out_dir)
    for item in inputs:
        where = os.path.realpath(item if os.path.isdir(item) else os.path.dirname(os.path.abspath(item)))
        if where == out:
            raise UsageError(f"--out {out_dir} holds the input {item}: results written there could overwrite "
                             f"inputs and be read as inputs by the next run; choose another directory")
    try:
        return output_manifest("--out", out_dir, MANIFEST, settings or {}, overwrite, results="results",
                               files="result files", suffixes=OUTPUT_SUFFIXES)
    except ValueError as e:
        raise UsageError(str(e)) from None


@dataclasses.dataclass
class Progress:
    """Counts of a run, kept up to date as it goes: images found (``total``), images whose results are
    complete (``complete``, those skipped as complete before included), ``skipped`` and ``failed``."""

    total: int
    complete: int = 0
    skipped: int = 0
    failed: int = 0


def _keys(found: Sequence[tuple[str, str | None]]) -> list[str | None]:
    """The manifest key of each image (its real path; ``#2``, ... for a file given again), None for a problem."""
    keys, seen = [], {}
    for path, problem in found:
        if problem is not None:
            keys.append(None)
            continue
        real = os.path.realpath(path)
        seen[real] = seen.get(real, 0) + 1
        keys.append(real if seen[real] == 1 else f"{real}#{seen[real]}")
    return keys


def plan(found: Sequence[tuple[str, str | None]], manifest: Manifest | None) -> Progress:
    """The progress of a run over ``found`` (:func:`find_images`) before it starts: its images, and those
    ``manifest`` records as complete."""
    keys = [k for k in _keys(found) if k is not None]
    done = sum(manifest.complete(k) is not None for k in keys) if manifest is not None else 0
    return Progress(total=len(keys), complete=done, skipped=done)


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


def predict_files(segment: Inference, inputs: Sequence[str], out_dir: str, *, probs: bool = False,
                  probs_dtype: str = "float16", alpha: float = 0.5, prog: str = "predict.py",
                  manifest: Manifest | None = None, progress: Progress | None = None) -> int:
    """Segments every image of ``inputs`` into ``out_dir`` (see the module docstring for the files), each
    image's files written as one group (:func:`fcn_jax.io.atomic_group`).

    With ``manifest``, images it records as complete are skipped and each image is recorded once its files
    are in place. ``progress`` (default: :func:`plan`'s) is updated as the run goes, so that an interrupt's
    message can count truthfully. Raises :class:`~fcn_jax.io.WriteError` (one line) at the first result
    that cannot be written, having left no part of it. Returns the number of inputs that failed (each
    reported as one line on stderr).
    """
    names = segment.class_names
    found = list(find_images(inputs))
    if progress is None:
        progress = plan(found, manifest)
    recorded = {} if manifest is None else manifest.entries
    used = {e["stem"] for e in recorded.values() if isinstance(e.get("stem"), str)}
    for (path, problem), key in zip(found, _keys(found)):
        if manifest is not None and key is not None and manifest.complete(key) is not None:
            continue  # counted by plan()
        image = None
        try:
            if problem:
                raise ValueError(problem)
            image = load_image(path)
            label, probabilities = segment.predict(image, probabilities=probs)
            pictures = [colorize(label, segment.colours),
                        overlay(image, label, names, alpha=alpha, colours=segment.colours)]
            arrays = [] if probabilities is None else [probabilities.astype(probs_dtype)]
        except (ValueError, OSError, RuntimeError, MemoryError) as e:  # unreadable, OOM
            progress.failed += 1
            print(f"{prog}: error: {path}: {error_line(e, segment, image)}", file=sys.stderr)
            continue
        entry = recorded.get(key)
        stem = entry["stem"] if entry is not None and isinstance(entry.get("stem"), str) else _unique_stem(path, used)
        base = os.path.join(out_dir, stem)
        targets = [f"{base}.png", f"{base}_overlay.png"] + [f"{base}_probs.npy"] * len(arrays)
        def record(key: str = key, targets: list[str] = targets, stem: str = stem) -> None:
            if manifest is not None:
                manifest.add(key, targets, stem=stem, input=os.path.abspath(path))
            progress.complete += 1  # inside the group's commit: an interrupt never leaves it uncounted

        try:
            with atomic_group(targets, record) as temps:
                for picture, tmp in zip(pictures, temps):
                    picture.save(tmp, format="PNG")
                for array, tmp in zip(arrays, temps[len(pictures):]):
                    np.save(tmp, array)
        except OSError as e:  # a full disk, a vanished or read-only directory: every later image fails too
            again = "" if manifest is None else "; free space and run the same command again to continue" \
                if is_full_disk(e) else "; run the same command again to continue"
            raise WriteError(f"--out {out_dir}: {error_text(e)}; {progress.complete} of {progress.total} images' "
                             f"results are complete there{again}") from e
        present = ", ".join(names[c] for c in np.unique(label))
        print(f"{path} -> {base}.png ({image.shape[1]}x{image.shape[0]}: {present})")
    return progress.failed


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
    add_model_flags(parser, onnx=True)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created; not a "
                        "directory of the inputs)")
    parser.add_argument("--overwrite", action="store_true", help="start afresh, replacing the results in --out "
                        "(needed when they were made with other settings); without it a run continues an "
                        "interrupted one, skipping the images whose results are complete")
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


def load_segmenter(args: argparse.Namespace) -> tuple[Inference, int | None]:
    """The :class:`Inference` of ``--ckpt`` with the run's flags, and the model's training step. An ``.onnx``
    file runs on onnxruntime at its exported size (larger images as windows of that size: ``--tile`` and
    ``--max-side`` are for JAX models); errors name the flag."""
    if not onnx_model.is_onnx(args.ckpt):
        variables, info = load_ckpt(args)
        return Inference.from_info(variables, info, flip=args.flip, scales=args.scales,
                                   tile=args.tile if args.max_side else None, overlap=args.overlap,
                                   max_side=args.max_side), info.step
    if args.dtype is not None:
        raise UsageError(f"--dtype {args.dtype}: an ONNX model computes in the dtype it was exported with")
    if args.scales != (1.0,):
        raise UsageError("--scales: an ONNX model runs at its exported size only (flips work: --flip)")
    try:
        model, info = onnx_model.load(args.ckpt)
    except (ValueError, ImportError) as e:
        raise UsageError(f"--ckpt {e}") from None
    return Inference.from_info({}, info, model=model, flip=args.flip, overlap=args.overlap), info.step


def _interrupted(signum: int, progress: Progress, out_dir: str) -> str:
    """The message of an interrupted run: the signal, and how many images' results are complete."""
    done = (f"{progress.complete} of {progress.total} images' results are complete in {out_dir}; run the same "
            f"command again to continue" if os.path.isdir(out_dir) else "no results were written")
    return f"interrupted by {signal.Signals(signum).name}; {done}"


def _remove_if_empty(out_dir: str, manifest: Manifest) -> None:
    """Removes ``out_dir`` (which this run created) if it holds nothing but the manifest."""
    try:
        if set(os.listdir(out_dir)) <= {MANIFEST}:
            manifest.remove()
            os.rmdir(out_dir)
    except OSError:
        pass


@user_errors("predict.py", interrupted="no results were written")
def main(argv: Sequence[str] | None = None) -> int:
    """``python predict.py ...``; returns the exit code (0 all done, 1 some images failed or results could
    not be written, 2 usage error, 130 / 143 interrupted)."""
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
    found = list(find_images(args.inputs))
    if all(problem is not None for _, problem in found):
        raise UsageError(f"{found[0][0]}: {found[0][1]}; no image to segment")
    settings = run_settings(args)
    manifest = check_out_dir(args.inputs, args.out, args.overwrite, settings)
    progress = plan(found, manifest if manifest.exists and not args.overwrite else None)
    created = not os.path.isdir(args.out)
    try:
        platform.setup(verbose=args.verbose)
        segment, step = load_segmenter(args)
        settings["model_step"] = step  # --step best / latest: the step they named at the first run
        if manifest.exists and not args.overwrite and manifest.differences({"model_step": step}):
            raise UsageError(other_settings("--out", args.out, "results", manifest.differences({"model_step": step})))
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {args.out}: {e}") from e
        if args.overwrite or not manifest.exists:
            try:
                manifest.begin(settings)
            except OSError as e:
                raise WriteError(f"--out {args.out}: {error_text(e)}; no results were written") from e
        if progress.skipped == progress.total:
            print(f"{args.out}: every image's results are complete already ({progress.total} of {progress.total}); "
                  f"nothing to do")
        elif progress.skipped:
            print(f"{args.out}: {progress.skipped} of {progress.total} images' results are complete already "
                  f"(skipped); segmenting the other {progress.total - progress.skipped}")
        failures = predict_files(segment, args.inputs, args.out, probs=args.probs, probs_dtype=args.probs_dtype,
                                 alpha=args.alpha, prog=parser.prog, manifest=manifest, progress=progress)
        return 1 if failures else 0
    except KeyboardInterrupt as e:
        if created and progress.complete == 0:
            _remove_if_empty(args.out, manifest)
        sys.stdout.flush()
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
        return fail(parser.prog, _interrupted(signum, progress, args.out), code=interrupted_code(signum))
    except WriteError as e:
        sys.stdout.flush()
        return fail(parser.prog, str(e), code=1)
    finally:
        if created and progress.complete == 0:
            _remove_if_empty(args.out, manifest)


if __name__ == "__main__":
    sys.exit(main())
