"""Folder datasets: ``folder:DIR`` names a directory of images and masks, read directly (no tfds, no build step).

Layout::

    DIR/
      classes.txt          optional. One class per line: ``name`` or ``name R G B`` (colour 0..255, for RGB
                           colour masks); line i (0-based; blank lines and lines starting with # skipped) is
                           class index i. An optional LAST line ``void R G B`` is not a class: it is the colour
                           of ignored pixels in colour masks. Either every class has a colour or none has.
      images/<stem>.<ext>  any format PIL reads (jpg, png, tif, bmp, webp, ...); EXIF orientation is applied
      masks/<stem>.png     one mask per image, same stem (also .bmp, .tif, .tiff, .gif; never JPEG: lossy)
      train.txt, val.txt   optional: the stems (one per line) of each split

Splits (``train`` and ``val``), in order of precedence: (a) ``images/train/``, ``images/val/`` with
``masks/train/``, ``masks/val/``; (b) ``train.txt`` and ``val.txt`` (both, if either exists) listing
stems of the flat layout (images listed in neither are ignored); (c) otherwise a deterministic 90/10
split of the flat layout: the sorted stems permuted by ``np.random.default_rng(0).permutation``, the
first ``max(1, round(0.1 * n))`` are ``val``, the rest ``train`` (adding or removing an image re-draws it).

Masks (the returned ``segmentation`` is (H, W) uint8 with ``fcn_jax.preprocess.VOID`` = 255 = ignored):

- palette PNG (mode ``P``): the pixel index is the class (the palette's colours are ignored);
- grayscale (``L``, ``LA``, 1-bit) and 16/32-bit (``I;16``, ``I``): the value is the class;
- RGB / RGBA: the pixel's colour is looked up in classes.txt's colours (or its ``void`` colour); a
  colour in neither is an error. Without colours in classes.txt a mask whose pixels all have
  R == G == B is read as grayscale values, any other RGB mask is an error.
- ``void`` (default 255): the index value of ignored pixels; it becomes 255 in the returned labels (so
  with ``void=0`` a mask's 0 becomes 255 and the other values stay: classes then start at 1). Any other
  value >= 255 is an error (labels are uint8 with 255 = void), as is a value >= the number of classes
  in classes.txt.
- ``binary=True``: any mask read as grayscale (palette and colour masks by their colours: any non-zero
  channel counts), 0 -> class 0, anything else -> class 1; class names from classes.txt (exactly two)
  or ('background', 'foreground'); no void. A binary mask holds 0 and at most one other value (colour
  and palette masks: black and at most one other colour); more would merge classes and is an error.

Without classes.txt the classes are discovered from the masks: ``class_0`` ... up to the largest value
present. Masks holding only 0 and the void value are refused unless ``binary=True`` (0/255 foreground
masks would otherwise train on background alone).

A :class:`FolderDataset` scans the folder once at construction, in a thread pool (a progress bar for
more than 200 examples): every mask is decoded to validate its values and size against its image and to
count labelled pixels per class and split, and every image is decoded in full, so a truncated or damaged
file is found before training starts (a header read would pass it). Images that decoded are recorded by
path, size and mtime in the user cache (:func:`cache_dir`, ``folders/``; never in the dataset), so an
unchanged image is not decoded again by a later scan, in any process. Every problem is a one-line
:class:`DataError` naming the file. :func:`load_folder` caches datasets in-process by (root, void, binary)
and a fingerprint of the files (path, size, mtime), so a changed folder is scanned again. A split's
:class:`FolderSource` decodes image and mask on access (``len``, ``[i]``), in the input pipeline's worker
threads; a file damaged after the scan is a DataError naming it there.

:meth:`FolderDataset.file_table` fingerprints the examples the scan read (size and mtime of each image and
mask) and the classes / split-list files it used; :func:`fingerprint_changes` compares two tables (what a
resumed training run reports when its folder changed).

This module imports neither jax nor TensorFlow itself (NumPy, PIL, tqdm).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import operator
import os
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import PIL
from PIL import Image

from fcn_jax.data.base import DataError
from fcn_jax.images import load_image
from fcn_jax.io import write_json
from fcn_jax.preprocess import VOID

__all__ = ["PREFIX", "Classes", "FolderDataset", "FolderSource", "MASK_EXTENSIONS", "MaskOptions", "cache_dir",
           "fingerprint_changes", "folder_root", "image_extensions", "image_size", "is_folder", "load_folder",
           "read_classes", "read_mask"]

PREFIX = "folder:"
SPLITS = ("train", "val")
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff", ".gif")
CLASSES_FILE = "classes.txt"
MASK_KINDS = ("palette", "grayscale", "colour", "binary")
BINARY_NAMES = ("background", "foreground")
VAL_FRACTION = 0.1
SPLIT_SEED = 0
_SHOWN = 5  # how many offending files an error names
_PROGRESS_MIN_FILES = 200
_LIST_FILES = tuple(f"{split}.txt" for split in SPLITS)
_OTHER_FILES = (CLASSES_FILE, *_LIST_FILES)  # the non-example files a file table fingerprints
# PIL registers these extensions, but their plugins are stubs or not images one trains on.
_NOT_IMAGES = frozenset({".bufr", ".grib", ".h5", ".hdf", ".emf", ".wmf", ".mpeg", ".mpg"})
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that transpose the image (width <-> height)


def is_folder(name: Any) -> bool:
    """True for dataset names ``folder:DIR``."""
    return isinstance(name, str) and name.startswith(PREFIX)


def folder_root(name: str) -> str:
    """The absolute directory of ``folder:DIR`` (DIR relative to the working directory, ``~`` expanded)."""
    if not is_folder(name):
        raise DataError(f"{name!r} is not a folder dataset name ({PREFIX}DIR)")
    path = name[len(PREFIX):]
    if not path.strip():
        raise DataError(f"dataset {name!r} names no directory; expected {PREFIX}DIR, e.g. {PREFIX}data/my_dataset")
    return os.path.abspath(os.path.expanduser(path))


_IMAGE_EXTENSIONS: frozenset[str] | None = None


def image_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of the image formats PIL can open."""
    global _IMAGE_EXTENSIONS
    if _IMAGE_EXTENSIONS is None:
        Image.init()
        _IMAGE_EXTENSIONS = frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                                      if fmt in Image.OPEN) - _NOT_IMAGES
    return _IMAGE_EXTENSIONS


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`fcn_jax.images.load_image` returns it (EXIF orientation
    applied), from the header: the pixels are not decoded. Raises DataError naming the file."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            # The base class's getexif reads what the header gave (PNG's own would decode the image).
            orientation = Image.Image.getexif(image).get(0x0112, 1)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"{os.fspath(path)}: cannot read image ({_reason(e)})") from e
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def cache_dir() -> str:
    """fcn_jax's user cache directory: ``$XDG_CACHE_HOME/fcn_jax`` when XDG_CACHE_HOME is an absolute path,
    else ``~/.cache/fcn_jax``."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fcn_jax")


class _DecodeRecord:
    """The images of one folder that decoded in full, ``{path relative to the root: [size, mtime_ns, width,
    height]}``, in ``cache_dir()/folders/<hash of the root>.json`` (and for this PIL version only).

    An image whose size and mtime match its entry is not decoded again. The record is a speed-up only: an
    unreadable, unwritable or missing one means decoding again, silently. Thread-safe.
    """

    def __init__(self, root: str):
        self.root = root
        name = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".json"
        self.path = os.path.join(cache_dir(), "folders", name)
        self._old = self._read()
        self._new: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def _read(self) -> dict[str, list[int]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                record = json.load(f)
            if record["root"] != self.root or record["pil"] != PIL.__version__:
                return {}
            return {str(k): [int(x) for x in v] for k, v in record["images"].items() if len(v) == 4}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def size(self, relative: str, st: os.stat_result) -> tuple[int, int] | None:
        """(width, height) of an image that decoded before at this size and mtime, else None."""
        entry = self._old.get(relative)
        if entry is None or entry[0] != st.st_size or entry[1] != st.st_mtime_ns:
            return None
        with self._lock:
            self._new[relative] = entry
        return entry[2], entry[3]

    def add(self, relative: str, st: os.stat_result, width: int, height: int) -> None:
        """Records an image that decoded in full (``st``: its stat from before the decode)."""
        with self._lock:
            self._new[relative] = [int(st.st_size), int(st.st_mtime_ns), int(width), int(height)]

    def save(self, complete: bool) -> None:
        """Writes the record: after a ``complete`` scan its images only, else the old entries updated."""
        with self._lock:
            images = dict(self._new) if complete else {**self._old, **self._new}
        if images == self._old:
            return
        try:
            write_json(self.path, {"root": self.root, "pil": PIL.__version__, "images": dict(sorted(images.items()))})
        except OSError:
            pass


# ------------------------------------------------------------------------------------------------
# Masks.

@dataclasses.dataclass(frozen=True)
class MaskOptions:
    """How mask files become labels (picklable, a few small arrays at most).

    ``colours``: RGB of class i, or None; ``void_colour``: RGB of ignored pixels in colour masks;
    ``void``: index value of ignored pixels; ``binary``: 0 -> 0, non-zero -> 1; ``num_classes``: index
    values must be below it (None: below 255); ``classes_file``: named in errors about colours.
    """

    colours: tuple[tuple[int, int, int], ...] | None = None
    void_colour: tuple[int, int, int] | None = None
    void: int = VOID
    binary: bool = False
    num_classes: int | None = None
    classes_file: str = CLASSES_FILE

    def colour_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted packed RGB keys, label of each key) for the colour lookup."""
        keys, labels = [], []
        for index, colour in enumerate(self.colours or ()):
            keys.append(_pack(colour))
            labels.append(index)
        if self.void_colour is not None:
            keys.append(_pack(self.void_colour))
            labels.append(VOID)
        order = np.argsort(keys)
        return np.asarray(keys, np.int64)[order], np.asarray(labels, np.uint8)[order]


def _pack(colour: Sequence[int]) -> int:
    r, g, b = colour
    return (int(r) << 16) | (int(g) << 8) | int(b)


def _first_pixel(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the first True pixel of a 2-D boolean array (row-major)."""
    y, x = np.unravel_index(int(np.argmax(mask)), mask.shape)
    return int(x), int(y)


def _index_labels(values: np.ndarray, path: str, options: MaskOptions) -> np.ndarray:
    """Integer class-index values -> uint8 labels (void -> 255), every value checked."""
    void = options.void
    limit = min(options.num_classes if options.num_classes is not None else VOID, VOID)
    if values.dtype != np.uint8:
        if values.dtype.kind not in "biu":
            raise DataError(f"{path}: mask values are {values.dtype}; expected integer class indices")
        if values.size and int(values.min()) >= 0 and int(values.max()) <= 255:
            values = values.astype(np.uint8)
        else:
            is_void = values == void
            bad = ~is_void & ((values < 0) | (values >= limit))
            if bad.any():
                x, y = _first_pixel(bad)
                raise _bad_value(path, int(values[y, x]), x, y, options, limit)
            return np.where(is_void, VOID, values).astype(np.uint8)
    # Maxima rather than a histogram: two vectorised passes at most (this runs for every example read).
    top = int(values.max(initial=0))
    if top >= limit and (top != void or int(np.max(values, where=values != void, initial=0)) >= limit):
        bad = (values != void) & (values >= limit)
        x, y = _first_pixel(bad)
        raise _bad_value(path, int(values[y, x]), x, y, options, limit)
    if void != VOID and void < 256:
        values = np.where(values == void, np.uint8(VOID), values)
    return values


def _bad_value(path: str, value: int, x: int, y: int, options: MaskOptions, limit: int) -> DataError:
    where = f"{path}: mask value {value} at pixel (x={x}, y={y})"
    if options.num_classes is not None and value < VOID:
        return DataError(f"{where} is not a class: {options.classes_file} lists {options.num_classes} classes "
                         f"(values 0..{options.num_classes - 1}; void is {options.void})")
    return DataError(f"{where} is not allowed: class values must be 0..{limit - 1} and the void value is "
                     f"{options.void} (labels are stored as uint8 with 255 = void; see --void-value)")


def _colour_labels(rgb: np.ndarray, path: str, options: MaskOptions) -> np.ndarray:
    """(H, W, 3) uint8 colours -> uint8 labels through the classes' colours (void colour -> 255)."""
    keys, labels = options.colour_table()
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    slot = np.minimum(np.searchsorted(keys, packed), len(keys) - 1)
    unknown = keys[slot] != packed
    if unknown.any():
        x, y = _first_pixel(unknown)
        colour = tuple(int(c) for c in rgb[y, x])
        void = "nor the void colour" if options.void_colour is not None else "(and it has no `void R G B` line)"
        raise DataError(f"{path}: colour {colour} at pixel (x={x}, y={y}) is not a class colour of "
                        f"{options.classes_file} {void}")
    return labels[slot]


CLASS_LIKE_VALUES = 32  # binary masks: non-zero values all below this look like class indices
CLASS_LIKE_COLOURS = 16  # binary colour masks: this many distinct colours or fewer look like classes


def _check_binary(keys: np.ndarray, pixels: np.ndarray, path: str, what: str) -> None:
    """DataError when ``keys`` (H, W) look like several classes that binary reading would merge into class 1:
    non-zero values that are all class-index-like (below :data:`CLASS_LIKE_VALUES`, e.g. 0, 1, 2; 255 aside,
    the usual void value: 0, 1, 255 is refused too) or, for
    colours, 2 to :data:`CLASS_LIKE_COLOURS` distinct non-black colours. Soft-edged foreground masks (0 and
    255 with anti-aliased values between, or a colour with its blends) stay binary. ``pixels``: the value or
    colour of each pixel, shown in the message."""
    nonzero = np.unique(keys[keys != 0])
    if nonzero.size < 2:
        return
    if what == "values" and (nonzero[nonzero != 255] >= CLASS_LIKE_VALUES).any():
        return
    if what != "values" and nonzero.size > CLASS_LIKE_COLOURS:
        return
    found = np.unique(keys)
    shown = [pixels[_first_pixel(keys == k)[::-1]] for k in found[:_SHOWN]]
    listed = ", ".join(str(int(v)) if np.ndim(v) == 0 else str(tuple(int(c) for c in v)) for v in shown)
    zero = "0" if what == "values" else "black"
    raise DataError(f"{path}: mask holds {found.size} {what} ({listed}{', ...' if found.size > _SHOWN else ''}) but "
                    f"a binary mask (binary=True, --binary-masks) holds {zero} and one other, and the others would "
                    "be merged into class 1; without --binary-masks each is a class")


def _decode_mask(path: str, options: MaskOptions) -> tuple[np.ndarray, str]:
    """(labels (H, W) uint8 with 255 = void, kind in MASK_KINDS) of one mask file."""
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if options.binary:
                if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16"):
                    values = np.asarray(image.convert("L") if mode in ("1", "LA") else image)
                    _check_binary(values, values, path, "values")
                else:  # palette, colour and the rest: by colour, black is background
                    rgb = np.asarray(image.convert("RGB"))
                    _check_binary((rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8)
                                  | rgb[..., 2], rgb, path, "colours")
                    values = rgb.max(axis=2)
                return (values != 0).astype(np.uint8), "binary"
            if mode in ("P", "PA"):
                values, kind = np.asarray(image.getchannel(0) if mode == "PA" else image), "palette"
            elif mode in ("1", "L", "LA", "I") or mode.startswith("I;16"):
                values, kind = np.asarray(image.getchannel(0) if mode == "LA" else image), "grayscale"
            elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
                values, kind = np.asarray(image.convert("RGB") if mode != "RGB" else image), "colour"
            else:
                raise DataError(f"{path}: mask mode {mode} is not supported; expected a palette (P), grayscale "
                                "(L, I;16) or RGB mask")
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"{path}: cannot read mask ({_reason(e)})") from e
    if values.ndim != 2 and kind != "colour":
        raise DataError(f"{path}: expected a single-channel mask, got shape {values.shape}")
    if kind == "colour":
        if options.colours is not None:
            return _colour_labels(values, path, options), kind
        red = values[..., 0]
        if not (np.array_equal(red, values[..., 1]) and np.array_equal(red, values[..., 2])):
            unequal = (red != values[..., 1]) | (red != values[..., 2])
            x, y = _first_pixel(unequal)
            where = (f"{options.classes_file} gives no colours" if os.path.exists(options.classes_file)
                     else f"there is no {options.classes_file}")
            raise DataError(f"{path}: RGB colour mask (pixel (x={x}, y={y}) is {tuple(int(c) for c in values[y, x])}) "
                            f"but {where}: classes.txt needs `name R G B` lines (one per class, and an optional "
                            "last `void R G B`)")
        values, kind = red, "grayscale"
    if values.dtype == bool:
        values = values.astype(np.uint8)
    return _index_labels(values, path, options), kind


def read_mask(path: str | os.PathLike, *, colours: Sequence[Sequence[int]] | None = None,
              void_colour: Sequence[int] | None = None, void: int = VOID, binary: bool = False,
              num_classes: int | None = None) -> np.ndarray:
    """One mask file -> (H, W) uint8 class indices with 255 = void (see the module docstring for the rules).

    ``colours``: the RGB of each class (needed for colour masks that are not gray); ``void_colour``: the
    RGB of ignored pixels in colour masks; ``void``: the index value of ignored pixels; ``binary``: 0 ->
    class 0, anything else -> class 1; ``num_classes``: index values must be below it. Raises DataError
    (one line naming the file, and for a bad value or colour the value and one pixel (x, y) that has it).
    """
    options = MaskOptions(colours=None if colours is None else tuple(tuple(int(v) for v in c) for c in colours),
                          void_colour=None if void_colour is None else tuple(int(v) for v in void_colour),
                          void=_check_void(void), binary=bool(binary), num_classes=num_classes)
    return _decode_mask(os.fspath(path), options)[0]


def _check_void(void: Any) -> int:
    if isinstance(void, bool) or not isinstance(void, (int, np.integer)) or not 0 <= int(void) <= 65535:
        raise DataError(f"void value must be an integer in 0..65535 (a mask value), got {void!r}")
    return int(void)


# ------------------------------------------------------------------------------------------------
# The random-access source.

class FolderSource:
    """Random-access source of one split: ``len(source)``, ``source[i]`` -> ``{'image': (H, W, 3) uint8 RGB,
    'segmentation': (H, W) uint8 (255 = void), 'file_name': stem}``, decoded from the files on access.

    Holds paths, the mask options and the sizes found by the scan only, so it pickles cheaply.
    Errors while decoding are DataErrors naming the file.
    """

    def __init__(self, images: Sequence[str], masks: Sequence[str], stems: Sequence[str], options: MaskOptions,
                 sizes: np.ndarray | None = None, split: str = ""):
        if not len(images) == len(masks) == len(stems):
            raise ValueError("images, masks and stems must have the same length")
        self.images, self.masks, self.stems = tuple(images), tuple(masks), tuple(stems)
        self.options = options
        self.split = split
        self._sizes = None if sizes is None else np.asarray(sizes, np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.images)
        index = operator.index(index)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a split of {n} examples")
        image_path, mask_path = self.images[index], self.masks[index]
        try:
            image = load_image(image_path)
        except ValueError as e:
            raise DataError(f"{image_path}: {e}") from e
        label = _decode_mask(mask_path, self.options)[0]
        if label.shape != image.shape[:2]:
            raise DataError(f"{mask_path}: mask is {label.shape[1]}x{label.shape[0]} (width x height) but its image "
                            f"{image_path} is {image.shape[1]}x{image.shape[0]}")
        return {"image": image, "segmentation": label, "file_name": self.stems[index]}

    def sizes(self) -> np.ndarray:
        """(N, 2) int64 (H, W) of every example, as scanned (no file is read): what
        ``pipeline.example_sizes`` would compute by decoding the whole split."""
        if self._sizes is None:
            return np.asarray([self[i]["segmentation"].shape for i in range(len(self))], np.int64).reshape(-1, 2)
        return self._sizes.copy()

    def __repr__(self) -> str:
        root = os.path.dirname(os.path.dirname(self.images[0])) if self.images else "?"
        return f"FolderSource({root!r}, split={self.split!r}, {len(self)} examples)"


# ------------------------------------------------------------------------------------------------
# Reading the folder.

@dataclasses.dataclass(frozen=True)
class Classes:
    """A parsed classes.txt: class names, their RGB colours (or None) and the void colour (or None)."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None
    void_colour: tuple[int, int, int] | None


def _read_lines(path: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank, non-comment lines of a text file."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({_reason(e)})") from e
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def _parse_int(token: str) -> int | None:
    try:
        return int(token)
    except ValueError:
        return None


def read_classes(path: str) -> Classes:
    """Parses classes.txt (see the module docstring); DataError naming ``file:line`` for a malformed line."""
    lines = _read_lines(path)
    names: list[str] = []
    colours: list[tuple[int, int, int] | None] = []
    void_colour = None
    expected = "expected `name` or `name R G B` (R, G, B in 0..255)"
    for position, (number, line) in enumerate(lines):
        where = f"{path}:{number}"
        tokens = line.split()
        trailing = 0
        while trailing < len(tokens) and _parse_int(tokens[len(tokens) - 1 - trailing]) is not None:
            trailing += 1
        if trailing >= 3 and len(tokens) > 3:
            name, colour = " ".join(tokens[:-3]), tuple(int(t) for t in tokens[-3:])
            if not all(0 <= c <= 255 for c in colour):
                raise DataError(f"{where}: colour {colour} is out of range; {expected}: {line!r}")
        elif trailing == 0:
            name, colour = line, None
        else:
            raise DataError(f"{where}: malformed line {line!r}; {expected}")
        if name.lower() == "void":
            if colour is None:
                raise DataError(f"{where}: `void` without a colour: the void mask value is set with void=... "
                                "(--void-value); a `void R G B` last line gives the void colour of colour masks")
            if position != len(lines) - 1:
                raise DataError(f"{where}: `void R G B` must be the last line (it is not a class)")
            void_colour = colour
            continue
        if name in names:
            raise DataError(f"{where}: class {name!r} is listed twice (also line {lines[names.index(name)][0]})")
        if colour is not None and colour in colours:
            other = names[colours.index(colour)]
            raise DataError(f"{where}: colour {colour} of {name!r} is also the colour of {other!r}")
        if names and (colour is None) != (colours[0] is None):
            raise DataError(f"{where}: {'no colour' if colour is None else 'a colour'} on {name!r} but "
                            f"{'not ' if colours[0] is None else ''}on the first class: either every class has "
                            "`name R G B` or none has")
        names.append(name)
        colours.append(colour)
    if not names:
        raise DataError(f"{path}: lists no classes; {expected}, one class per line")
    if len(names) > VOID:
        raise DataError(f"{path}: lists {len(names)} classes; at most {VOID} fit uint8 labels (255 is void)")
    has_colours = colours[0] is not None
    if void_colour is not None and not has_colours:
        raise DataError(f"{path}: a `void R G B` line needs colours on every class (`name R G B`)")
    if void_colour is not None and void_colour in colours:
        raise DataError(f"{path}: the void colour {void_colour} is also the colour of "
                        f"{names[colours.index(void_colour)]!r}")
    return Classes(tuple(names), tuple(colours) if has_colours else None, void_colour)  # type: ignore[arg-type]


def _files(directory: str) -> list[str]:
    """Names of the regular files (symlinks followed) in ``directory``, hidden ones skipped, sorted."""
    try:
        with os.scandir(directory) as entries:
            return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_file())
    except OSError as e:
        raise DataError(f"{directory}: cannot list ({_reason(e)})") from e


def _by_stem(directory: str, names: Iterable[str], extensions: Iterable[str], what: str) -> dict[str, str]:
    """{stem: file name} of the files with one of ``extensions``; two files with one stem are an error."""
    extensions = frozenset(extensions)
    found: dict[str, str] = {}
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext.lower() not in extensions:
            continue
        if stem in found:
            raise DataError(f"{directory}: two {what} share the stem {stem!r} ({found[stem]}, {name}); "
                            "one per stem")
        found[stem] = name
    return found


def _listing(images_dir: str, masks_dir: str) -> tuple[dict[str, str], dict[str, str], int]:
    """({stem: image name}, {stem: mask name}, number of ignored files) of one image/mask directory pair."""
    image_names, mask_names = _files(images_dir), _files(masks_dir)
    images = _by_stem(images_dir, image_names, image_extensions(), "images")
    lossy = [n for n in mask_names if os.path.splitext(n)[1].lower() in image_extensions() - set(MASK_EXTENSIONS)]
    if lossy:
        raise DataError(f"{os.path.join(masks_dir, lossy[0])}: masks must be lossless ({', '.join(MASK_EXTENSIONS)}); "
                        f"{len(lossy)} mask file(s) of another format (JPEG would change the label values)")
    masks = _by_stem(masks_dir, mask_names, MASK_EXTENSIONS, "masks")
    ignored = len(image_names) - len(images) + len(mask_names) - len(masks)
    return images, masks, ignored


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (", ..." if len(names) > _SHOWN else "")


def _check_pairs(images_dir: str, masks_dir: str, images: dict[str, str], masks: dict[str, str]) -> None:
    no_mask = [images[s] for s in images if s not in masks]
    no_image = [masks[s] for s in masks if s not in images]
    problems = []
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in {images_dir} have no mask in {masks_dir} "
                        f"(expected <stem>.png): {_few(no_mask)}")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in {masks_dir} have no image in {images_dir}: {_few(no_image)}")
    if problems:
        raise DataError("; ".join(problems))


@dataclasses.dataclass
class _Item:
    stem: str
    image: str
    mask: str


def _read_list(path: str, images: dict[str, str]) -> list[str]:
    """The stems a list file names, in order; DataError naming ``file:line`` for an unknown or repeated one."""
    stems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in _read_lines(path):
        stem = line
        if stem not in images:
            base, ext = os.path.splitext(line)
            if ext.lower() in image_extensions() and base in images:  # a file name instead of a stem
                stem = base
            else:
                raise DataError(f"{path}:{number}: {line!r} has no image in {os.path.dirname(path)}/images")
        if stem in seen:
            raise DataError(f"{path}:{number}: {stem!r} is listed twice (also line {seen[stem]})")
        seen[stem] = number
        stems.append(stem)
    return stems


def _plan(root: str) -> tuple[dict[str, list[_Item]], str, list[str]]:
    """({split: items}, how the split was made, notes) of the folder at ``root``."""
    images_dir, masks_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for directory in (images_dir, masks_dir):
        if not os.path.isdir(directory):
            raise DataError(f"{directory}: no such directory; a folder dataset needs images/ and masks/ "
                            f"(see fcn_jax.data.folder)")
    notes: list[str] = []
    split_dirs = [s for s in SPLITS if os.path.isdir(os.path.join(images_dir, s))]
    plan: dict[str, list[_Item]] = {}
    if split_dirs:  # (a) directories
        for split in SPLITS:
            for directory in (os.path.join(images_dir, split), os.path.join(masks_dir, split)):
                if not os.path.isdir(directory):
                    raise DataError(f"{directory}: no such directory; split directories need images/train, "
                                    "images/val, masks/train and masks/val")
        flat = [n for n in _files(images_dir) if os.path.splitext(n)[1].lower() in image_extensions()]
        if flat:
            raise DataError(f"{images_dir}: has split directories (train/, val/) and {len(flat)} image(s) outside "
                            f"them ({_few(flat)}); move them into train/ or val/")
        ignored = 0
        for split in SPLITS:
            split_images, split_masks = os.path.join(images_dir, split), os.path.join(masks_dir, split)
            images, masks, skipped = _listing(split_images, split_masks)
            ignored += skipped
            _check_pairs(split_images, split_masks, images, masks)
            if not images:
                raise DataError(f"{split_images}: no images: split {split!r} is empty")
            plan[split] = [_Item(s, os.path.join(split_images, images[s]), os.path.join(split_masks, masks[s]))
                           for s in sorted(images)]
        method = "directories images/{train,val}"
        if any(os.path.exists(os.path.join(root, f"{s}.txt")) for s in SPLITS):
            notes.append("train.txt / val.txt ignored: the split directories take precedence")
        if ignored:
            notes.append(f"{ignored} file(s) that are not images or masks ignored")
        return plan, method, notes
    images, masks, ignored = _listing(images_dir, masks_dir)
    if ignored:
        notes.append(f"{ignored} file(s) in images/ and masks/ that are not images or masks ignored")
    lists = {s: os.path.join(root, f"{s}.txt") for s in SPLITS}
    present = [s for s, p in lists.items() if os.path.exists(p)]
    if present:  # (b) lists
        for split, path in lists.items():
            if not os.path.isfile(path):
                raise DataError(f"{path}: missing; with {present[0]}.txt present both train.txt and val.txt are "
                                "needed (or neither, for a random 90/10 split)")
        stems = {s: _read_list(p, images) for s, p in lists.items()}
        for split, path in lists.items():
            missing = [images[s] for s in stems[split] if s not in masks]
            if missing:
                raise DataError(f"{len(missing)} image(s) listed in {path} have no mask in {masks_dir} "
                                f"(expected <stem>.png): {_few(missing)}")
            if not stems[split]:
                raise DataError(f"{path}: lists no stems: split {split!r} is empty")
        both = set(stems["train"]) & set(stems["val"])
        if both:
            notes.append(f"{len(both)} stem(s) are in both train.txt and val.txt: {_few(sorted(both))}")
        unlisted = len(set(images) - set(stems["train"]) - set(stems["val"]))
        if unlisted:
            notes.append(f"{unlisted} image(s) listed in neither train.txt nor val.txt ignored")
        method = "lists train.txt / val.txt"
    else:  # (c) random split
        _check_pairs(images_dir, masks_dir, images, masks)
        ordered = sorted(images)
        n = len(ordered)
        if n < 2:
            raise DataError(f"{images_dir}: {n} image(s); a random train/val split needs at least 2 (or give "
                            "train.txt and val.txt, or images/train and images/val)")
        permutation = np.random.default_rng(SPLIT_SEED).permutation(n)
        num_val = max(1, round(VAL_FRACTION * n))
        stems = {"val": sorted(ordered[i] for i in permutation[:num_val]),
                 "train": sorted(ordered[i] for i in permutation[num_val:])}
        method = f"random 90/10 split (seed {SPLIT_SEED}) of {n} images"
    for split in SPLITS:
        plan[split] = [_Item(s, os.path.join(images_dir, images[s]), os.path.join(masks_dir, masks[s]))
                       for s in stems[split]]
    return plan, method, notes


def _fingerprint(root: str) -> tuple:
    """What a scan depends on: (relative path, size, mtime_ns) of every file it may read, sorted."""
    entries = []
    for directory in ("images", "masks"):
        for sub in ("", "train", "val"):
            path = os.path.join(root, directory, sub)
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        try:
                            if entry.is_file():
                                st = entry.stat()
                                entries.append((os.path.join(directory, sub, entry.name), st.st_size, st.st_mtime_ns))
                        except OSError:
                            entries.append((os.path.join(directory, sub, entry.name), -1, -1))
            except OSError:
                entries.append((os.path.join(directory, sub), None, None))
    for name in (CLASSES_FILE, "train.txt", "val.txt"):
        try:
            st = os.stat(os.path.join(root, name))
            entries.append((name, st.st_size, st.st_mtime_ns))
        except OSError:
            pass
    return tuple(sorted(entries, key=lambda e: e[0]))


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_reason(e)})") from e


def _digest(*parts: Any) -> str:
    """A short stable hex digest of ``parts`` (strings and integers)."""
    return hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _scan_one(item: _Item, options: MaskOptions,
              record: _DecodeRecord) -> tuple[str, np.ndarray, tuple[int, int], str]:
    """(mask kind, 256-bin histogram of the labels, (H, W), fingerprint) of one example: the mask decoded,
    the image decoded in full unless ``record`` has it at this size and mtime, their sizes compared; the
    fingerprint digests both files' paths (relative to the root), sizes and mtimes, stat'ed before reading."""
    image_stat, mask_stat = _stat(item.image), _stat(item.mask)
    labels, kind = _decode_mask(item.mask, options)
    relative = os.path.relpath(item.image, record.root)
    size = record.size(relative, image_stat)
    if size is None:
        try:
            image = load_image(item.image)
        except ValueError as e:
            raise DataError(f"{item.image}: {e}") from e
        size = (image.shape[1], image.shape[0])
        del image
        record.add(relative, image_stat, *size)
    width, height = size
    if labels.shape != (height, width):
        raise DataError(f"{item.mask}: mask is {labels.shape[1]}x{labels.shape[0]} (width x height) but its image "
                        f"{item.image} is {width}x{height} (after EXIF orientation)")
    fingerprint = _digest(relative, image_stat.st_size, image_stat.st_mtime_ns, os.path.relpath(item.mask, record.root),
                          mask_stat.st_size, mask_stat.st_mtime_ns)
    return kind, np.bincount(labels.ravel(), minlength=256).astype(np.int64), labels.shape, fingerprint


def _scan(root: str, plan: dict[str, list[_Item]], options: MaskOptions,
          progress: bool) -> dict[str, list[tuple[str, np.ndarray, tuple[int, int], str]]]:
    """:func:`_scan_one` of every item, in a thread pool (PIL and NumPy release the GIL), results in order;
    the images that decoded are recorded in the user cache (:class:`_DecodeRecord`) even if one fails."""
    from tqdm import tqdm

    items = [(split, item) for split in SPLITS for item in plan[split]]
    results: dict[str, list] = {split: [] for split in SPLITS}
    record = _DecodeRecord(root)
    workers = min(32, (os.cpu_count() or 1) + 4)
    complete = False
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="folder-scan") as pool, \
            tqdm(total=len(items), desc=f"checking {root}", unit="example", file=sys.stderr,
                 disable=not progress or len(items) <= _PROGRESS_MIN_FILES, dynamic_ncols=True) as bar:
        futures = [pool.submit(_scan_one, item, options, record) for _, item in items]
        try:
            for (split, _), future in zip(items, futures):
                results[split].append(future.result())
                bar.update()
            complete = True
        finally:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)  # every decode that started is recorded before the record is saved
            record.save(complete)
    return results


def fingerprint_changes(old: dict[str, str], new: dict[str, str]) -> dict[str, Any]:
    """What changed between two :meth:`FolderDataset.file_table` tables: ``{'added', 'removed', 'changed'}``
    counts of examples (keyed by image path; changed: its image or mask has another size or mtime) and
    ``'other_files'``: the classes / split-list files added, removed or changed, sorted."""
    examples = [(k in old, k in new, old.get(k) != new.get(k)) for k in set(old) | set(new) if k not in _OTHER_FILES]
    return {"added": sum(not a and b for a, b, _ in examples), "removed": sum(a and not b for a, b, _ in examples),
            "changed": sum(a and b and d for a, b, d in examples),
            "other_files": sorted(k for k in _OTHER_FILES if old.get(k) != new.get(k))}


class FolderDataset:
    """A scanned folder dataset (see the module docstring); raises DataError (one line) for any problem.

    Attributes: ``root`` (absolute), ``class_names``, ``colours`` (RGB per class or None),
    ``void_colour``, ``void``, ``binary``, ``split_method``, ``stems`` ({split: stems}), ``sizes``
    ({split: (N, 2) int64 (H, W)}), ``pixel_counts`` ({split: (C,) int64 labelled pixels per class}),
    ``void_pixels`` ({split: int}), ``mask_kinds`` ({kind: number of masks}), ``notes``.
    """

    def __init__(self, root: str | os.PathLike, *, void: int = VOID, binary: bool = False, progress: bool = True):
        root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(root):
            raise DataError(f"{root}: folder dataset directory does not exist")
        if not os.path.isdir(root):
            raise DataError(f"{root}: folder dataset must be a directory (with images/ and masks/)")
        void = _check_void(void)
        if not isinstance(binary, (bool, np.bool_)):
            raise DataError(f"binary must be True or False, got {binary!r}")
        binary = bool(binary)
        if binary and void != VOID:
            raise DataError(f"{root}: void={void} does not apply with binary=True (binary masks have no void: "
                            "0 is background, anything else foreground)")
        self.root, self.void, self.binary = root, void, binary
        # stat'ed before they are read: what the file table records is never newer than what was read
        others = {name: _stat(os.path.join(root, name)) for name in _OTHER_FILES
                  if os.path.isfile(os.path.join(root, name))}
        classes_path = os.path.join(root, CLASSES_FILE)
        classes = read_classes(classes_path) if os.path.exists(classes_path) else None
        if binary and classes is not None and len(classes.names) != 2:
            raise DataError(f"{classes_path}: lists {len(classes.names)} classes but binary masks have 2 "
                            "(background, foreground)")
        plan, self.split_method, self.notes = _plan(root)
        options = MaskOptions(colours=classes.colours if classes else None,
                              void_colour=classes.void_colour if classes else None,
                              void=void, binary=binary,
                              num_classes=len(classes.names) if classes else None, classes_file=classes_path)
        results = _scan(root, plan, options, progress)
        histograms = {split: np.sum([r[1] for r in results[split]], axis=0) for split in SPLITS}
        total = np.sum(list(histograms.values()), axis=0)
        if not binary and total[0] and not total[1:VOID].any() and total[VOID]:
            raise DataError(f"{os.path.join(root, 'masks')}: masks hold only 0 and {void} (the void value): for "
                            "binary 0/255 masks pass binary=True (train.py --binary-masks); for another void value "
                            "pass void=... (--void-value)")
        if binary:
            names = classes.names if classes else BINARY_NAMES
        elif classes is not None:
            names = classes.names
        else:
            labelled = np.flatnonzero(total[:VOID])
            if not labelled.size:
                raise DataError(f"{os.path.join(root, 'masks')}: no labelled pixels: every mask pixel is void "
                                f"(value {void})")
            names = tuple(f"class_{i}" for i in range(int(labelled[-1]) + 1))
        num_classes = len(names)
        self.class_names: tuple[str, ...] = tuple(names)
        self.colours = classes.colours if classes else None
        self.void_colour = classes.void_colour if classes else None
        self.classes_file = classes_path if classes else None
        self._options = dataclasses.replace(options, num_classes=num_classes)
        self.stems = {split: tuple(item.stem for item in plan[split]) for split in SPLITS}
        self._items = {split: tuple(plan[split]) for split in SPLITS}
        self.sizes = {split: np.asarray([r[2] for r in results[split]], np.int64).reshape(-1, 2) for split in SPLITS}
        self.pixel_counts = {split: histograms[split][:num_classes].astype(np.int64) for split in SPLITS}
        self.void_pixels = {split: int(histograms[split][VOID]) for split in SPLITS}
        self.mask_kinds = {kind: sum(r[0] == kind for split in SPLITS for r in results[split]) for kind in MASK_KINDS}
        used = [name for name in others if name == CLASSES_FILE or self.split_method.startswith("lists")]
        self._files = {os.path.relpath(item.image, root): r[3] for split in SPLITS
                       for item, r in zip(plan[split], results[split])}
        self._files.update({name: _digest(name, others[name].st_size, others[name].st_mtime_ns) for name in used})

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def splits(self) -> dict[str, int]:
        """{split: number of examples}."""
        return {split: len(self.stems[split]) for split in SPLITS}

    def file_table(self) -> dict[str, str]:
        """``{path relative to the root: fingerprint}``, as scanned: one entry per example, keyed by its image
        (a digest of its image's and mask's paths, sizes and mtimes), and one per classes.txt / train.txt /
        val.txt the dataset used (a digest of its size and mtime). Compare two with :func:`fingerprint_changes`."""
        return dict(sorted(self._files.items()))

    def source(self, split: str) -> FolderSource:
        """The random-access source of ``split`` ('train' or 'val')."""
        if split not in self._items:
            raise DataError(f"{PREFIX}{self.root} has no split {split!r}; splits: {list(SPLITS)}")
        items = self._items[split]
        return FolderSource([i.image for i in items], [i.mask for i in items], [i.stem for i in items],
                            self._options, self.sizes[split], split)

    def _masks_line(self) -> str:
        kinds = {k: n for k, n in self.mask_kinds.items() if n}
        if self.binary:
            return f"masks: {kinds.get('binary', 0)} binary (0 = {self.class_names[0]}, non-zero = {self.class_names[1]})"
        described = {"palette": "palette (pixel index = class)", "grayscale": "grayscale (value = class)",
                     "colour": "RGB colour (looked up in classes.txt)"}
        parts = [f"{n} {described[k]}" for k, n in kinds.items()]
        void = f"void value {self.void} -> 255" if self.void != VOID else "void value 255"
        if self.void_colour is not None:
            void += f", void colour {self.void_colour}"
        return f"masks: {', '.join(parts)}; {void}"

    def describe(self) -> str:
        """A few lines for the console: root, classes, how masks were read, split sizes and how made."""
        names = ", ".join(self.class_names[:12]) + (", ..." if self.num_classes > 12 else "")
        origin = "classes.txt" if self.classes_file else "binary" if self.binary else "discovered from the masks"
        lines = [f"folder dataset {self.root}",
                 f"  classes ({self.num_classes}, {origin}): {names}",
                 f"  {self._masks_line()}",
                 f"  splits: {', '.join(f'{s} {n}' for s, n in self.splits.items())} ({self.split_method})"]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the dataset as scanned."""
        return {
            "name": f"{PREFIX}{self.root}",
            "root": self.root,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "colours": None if self.colours is None else [list(c) for c in self.colours],
            "void_colour": None if self.void_colour is None else list(self.void_colour),
            "void": self.void,
            "binary": self.binary,
            "split_method": self.split_method,
            "splits": self.splits,
            "stems": {split: list(stems) for split, stems in self.stems.items()},
            "pixel_counts": {split: [int(c) for c in counts] for split, counts in self.pixel_counts.items()},
            "void_pixels": dict(self.void_pixels),
            "mask_kinds": dict(self.mask_kinds),
            "notes": list(self.notes),
            "fingerprint": {"examples": sum(self.splits.values()),
                            "digest": _digest(sorted(self._files.items()))},
        }

    def __repr__(self) -> str:
        return f"FolderDataset({self.root!r}, {self.num_classes} classes, {self.splits})"


_CACHE: dict[tuple[str, int, bool], tuple[tuple, FolderDataset]] = {}
_CACHE_LOCK = threading.Lock()


def load_folder(root: str | os.PathLike, *, void: int = VOID, binary: bool = False,
                progress: bool = True) -> FolderDataset:
    """The :class:`FolderDataset` of ``root`` (a directory or a ``folder:DIR`` name), scanned once per
    process while its files (paths, sizes, mtimes) stay the same; a changed folder is scanned again."""
    root = folder_root(root) if is_folder(root) else os.path.abspath(os.path.expanduser(os.fspath(root)))
    key = (root, _check_void(void), bool(binary))
    fingerprint = _fingerprint(root)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0] == fingerprint:
        return hit[1]
    dataset = FolderDataset(root, void=void, binary=binary, progress=progress)
    with _CACHE_LOCK:
        _CACHE[key] = (fingerprint, dataset)
    return dataset
