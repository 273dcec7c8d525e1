"""``predict.py``: segment images of any size and mode, one at a time at full resolution.

For every input image ``<stem>.<ext>`` the output directory gets

- ``<stem>.png``: the label map as a palette PNG (pixel value = class index, VOC colours);
- ``<stem>_overlay.png``: the image blended with the class colours, with a legend of the classes present;
- with ``--probs``: ``<stem>_probs.npy``, per-class probabilities (H, W, C), float16 by default
  (``--probs-dtype float32``), averaged over the test-time augmentations if any.

Stems that repeat (``a.jpg`` and ``a.png``, or equal names in two directories) get ``_2``, ``_3``, ...
Any PIL-readable image works: EXIF orientation is applied; grayscale, palette, CMYK, 16-bit and
float images become RGB (16-bit and wider scaled to 8 bits); transparent pixels are composited over
white. A file that cannot be read or segmented gets one line ``predict.py: error: FILE: reason`` on
stderr and the others still run. Exit code: 0 if every image was segmented, 1 if any failed, 2 for a
usage error (bad flag, checkpoint or output directory).
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps

from fcn_jax.cli import ArgumentParser, UsageError
from fcn_jax.evaluate import (LoadedModel, add_model_flags, as_variables, class_scores,
                              is_single_pass, load_for_inference, run_cli)
from fcn_jax.preprocess import preprocess
from fcn_jax.viz import colorize, overlay

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale array -> uint8, by the range its values use."""
    values = np.nan_to_num(values.astype(np.float64))
    peak = float(values.max(initial=0))
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F" and peak <= 1.0:
        top = 1.0
    else:  # 32-bit 'I' or float: 8-bit values as they are, 16-bit ones scaled, wider ones normalised
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GRAY_MODES:
        return np.repeat(_gray_to_uint8(np.asarray(image), image.mode)[..., None], 3, axis=2)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_image(path: str) -> np.ndarray:
    """Reads an image file as (H, W, 3) uint8 RGB; raises ValueError with a one-line reason."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image ({reason})") from e
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"empty image ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb


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


class Predictor:
    """Segments one uint8 RGB image at a time at full resolution (one compiled program per size).

    ``__call__(image (H, W, 3) uint8) -> (label (H, W) int32, probabilities (H, W, C) float32 or None)``.
    """

    def __init__(self, model: Any, params: Any, convention: str, *, flip: bool = False,
                 scales: Sequence[float] = (1.0,), probabilities: bool = False):
        self.variables = jax.device_put(as_variables(params))
        single = is_single_pass(flip, scales)

        def run(variables: Any, image: jax.Array) -> tuple[jax.Array, jax.Array | None]:
            out = class_scores(model, variables, preprocess(image[None], convention), flip=flip, scales=scales)
            label = jnp.argmax(out[0], axis=-1).astype(jnp.int32)
            if not probabilities:
                return label, None
            return label, (jax.nn.softmax(out[0], axis=-1) if single else out[0])

        self._run = jax.jit(run)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        label, probs = self._run(self.variables, jnp.asarray(image, jnp.uint8))
        return np.asarray(label), None if probs is None else np.asarray(probs)


def _unique_stem(path: str, used: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


def predict_files(loaded: LoadedModel, inputs: Sequence[str], out_dir: str, *, flip: bool = False,
                  scales: Sequence[float] = (1.0,), probs: bool = False, probs_dtype: str = "float16",
                  alpha: float = 0.5, prog: str = "predict.py") -> int:
    """Segments every image of ``inputs`` into ``out_dir`` (see the module docstring for the files).

    Returns the number of inputs that failed (each reported as one line on stderr).
    """
    predictor = Predictor(loaded.model, loaded.params, loaded.convention, flip=flip, scales=scales,
                          probabilities=probs)
    names, used, failures = loaded.class_names, set(), 0
    for path, problem in find_images(inputs):
        try:
            if problem:
                raise ValueError(problem)
            image = load_image(path)
            label, probabilities = predictor(image)
            stem = os.path.join(out_dir, _unique_stem(path, used))
            colorize(label).save(f"{stem}.png")
            overlay(image, label, names, alpha=alpha).save(f"{stem}_overlay.png")
            if probabilities is not None:
                np.save(f"{stem}_probs.npy", probabilities.astype(probs_dtype))
        except (ValueError, OSError, RuntimeError) as e:  # unreadable input, write failure, device OOM
            failures += 1
            print(f"{prog}: error: {path}: {e}", file=sys.stderr)
            continue
        present = ", ".join(names[c] for c in np.unique(label))
        print(f"{path} -> {stem}.png ({image.shape[1]}x{image.shape[0]}: {present})")
    return failures


def build_predict_parser(prog: str = "predict.py") -> ArgumentParser:
    """The ``predict.py`` command line."""
    parser = ArgumentParser(prog=prog, description="Segment images with an FCN checkpoint: label PNGs "
                            "(VOC palette), overlays with a legend, optionally class probabilities.")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or directories")
    add_model_flags(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (created)")
    parser.add_argument("--probs", action="store_true", help="also save <stem>_probs.npy (H, W, C)")
    parser.add_argument("--probs-dtype", choices=("float16", "float32"), default="float16",
                        help="dtype of the saved probabilities (default: float16)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python predict.py ...``; returns the exit code (0 all done, 1 some images failed, 2 usage error)."""
    parser = build_predict_parser()

    def run(args: argparse.Namespace) -> int:
        if not 0 <= args.alpha <= 1:
            raise UsageError(f"--alpha must lie in [0, 1], got {args.alpha}")
        loaded = load_for_inference(args.ckpt, args.step, args.dtype)
        try:
            os.makedirs(args.out, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {args.out}: {e}") from e
        failures = predict_files(loaded, args.inputs, args.out, flip=args.flip, scales=args.scales,
                                 probs=args.probs, probs_dtype=args.probs_dtype, alpha=args.alpha,
                                 prog=parser.prog)
        return 1 if failures else 0

    return run_cli(run, parser, argv)
