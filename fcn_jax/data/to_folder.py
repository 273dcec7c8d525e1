"""Writing a registered dataset out in the folder format: image files, palette-PNG masks and ``classes.txt``.

::

    OUT_DIR/
      classes.txt             one class per line, ``name R G B`` (VOC palette colours), last line ``void 224 224 192``
      images/train/<stem>.png (or .jpg: quality 95, no chroma subsampling): the dataset's RGB image
      images/val/<stem>.png   the dataset's evaluation split is written as ``val``
      masks/train/<stem>.png  palette PNG: pixel index = class index, 255 = void (VOC colours)
      masks/val/<stem>.png

``<stem>`` is the example's ``file_name`` (path separators replaced by ``_``; ``_2``, ``_3``, ... if one
repeats). The folder is written as ``OUT_DIR.tmp-<pid>`` beside it and renamed to ``OUT_DIR`` only when
complete, so an interrupted export never leaves a folder that looks complete. Nothing here imports
TensorFlow (the dataset is read through :func:`fcn_jax.data.load_split`).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

import numpy as np

from fcn_jax.data import DataError, dataset_meta, load_split
from fcn_jax.preprocess import VOID

IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
EVAL_FOLDER = "val"
_LAYOUT = {"classes.txt", "images", "masks"}


def classes_text(class_names: Sequence[str]) -> str:
    """``classes.txt``: ``name R G B`` per class in index order (VOC palette), then ``void 224 224 192``."""
    from fcn_jax.viz import PALETTE
    lines = [f"{name} {' '.join(str(int(c)) for c in PALETTE[i])}" for i, name in enumerate(class_names)]
    lines.append(f"void {' '.join(str(int(c)) for c in PALETTE[VOID])}")
    return "\n".join(lines) + "\n"


def folder_name(split: str, train_split: str, eval_split: str) -> str:
    """The folder a split is written to: ``train`` for the training split, ``val`` for the evaluation split,
    the split's own name otherwise."""
    return {train_split: "train", eval_split: EVAL_FOLDER}.get(split, split)


def _stem(file_name: bytes | str, split: str, index: int, used: set[str]) -> str:
    name = file_name.decode("utf8", "replace") if isinstance(file_name, bytes) else str(file_name)
    stem = name.replace("/", "_").replace("\\", "_").strip() or f"{split}_{index:06d}"
    candidate, k = stem, 1
    while candidate in used:
        k += 1
        candidate = f"{stem}_{k}"
    used.add(candidate)
    return candidate


def _check_out_dir(out_dir: str, overwrite: bool) -> bool:
    """Whether ``out_dir`` holds something to replace; raises DataError if it must not be written."""
    if not os.path.exists(out_dir):
        return False
    if not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: exists and is not a directory")
    entries = set(os.listdir(out_dir))
    if not entries:
        return False
    if not overwrite:
        raise DataError(f"{out_dir}: exists and is not empty (pass --overwrite to replace an exported folder)")
    if "classes.txt" not in entries or not entries <= _LAYOUT:
        raise DataError(f"{out_dir}: exists and is not an exported dataset folder (classes.txt, images/, masks/ "
                        f"only); not overwriting it")
    return True


def export_folder(name: str, out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                  splits: Sequence[str] | None = None, image_format: str = "png", limit: int | None = None,
                  overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Writes dataset ``name``'s ``splits`` (default: its train and evaluation splits) to ``out_dir`` in the
    folder format (module docstring), building the dataset in ``data_dir`` first if needed.

    ``image_format``: 'png' (lossless) or 'jpg' (quality 95, 4:4:4); ``limit``: at most this many examples per
    split (the first ones); ``overwrite``: replace an earlier export at ``out_dir`` (anything else there is
    refused). Returns {folder: number of examples written}, e.g. ``{'train': 48, 'val': 16}``. Raises
    DataError (one line) for an unknown dataset or split, a bad option or an ``out_dir`` not to write.
    """
    from PIL import Image
    from tqdm import tqdm

    from fcn_jax.viz import colorize

    out_dir = os.path.abspath(os.fspath(out_dir))
    if image_format not in IMAGE_FORMATS:
        raise DataError(f"image format {image_format!r}: expected one of {', '.join(IMAGE_FORMATS)}")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be at least 1, got {limit}")
    meta = dataset_meta(name, data_dir=data_dir)
    splits = tuple(splits) if splits else (meta.train_split, meta.eval_split)
    for split in splits:
        if split not in meta.splits:
            raise DataError(f"{meta.name} has no split {split!r}; splits: {', '.join(meta.splits)}")
    folders = [folder_name(s, meta.train_split, meta.eval_split) for s in splits]
    if len(set(folders)) != len(folders):
        raise DataError(f"splits {', '.join(splits)} name one folder twice")
    replace = _check_out_dir(out_dir, overwrite)

    sources = {split: load_split(name, split, data_dir=data_dir) for split in splits}
    counts = {folder: len(sources[split]) if limit is None else min(limit, len(sources[split]))
              for split, folder in zip(splits, folders)}
    staging = f"{out_dir}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        with open(os.path.join(staging, "classes.txt"), "w", encoding="utf8") as f:
            f.write(classes_text(meta.class_names))
        with tqdm(total=sum(counts.values()), desc="export", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for split, folder in zip(splits, folders):
                images, masks = (os.path.join(staging, kind, folder) for kind in ("images", "masks"))
                os.makedirs(images), os.makedirs(masks)
                used: set[str] = set()
                for index in range(counts[folder]):
                    example = sources[split][index]
                    stem = _stem(example["file_name"], folder, index, used)
                    image = Image.fromarray(np.asarray(example["image"], np.uint8))
                    if image_format == "jpg":
                        image.save(os.path.join(images, f"{stem}.jpg"), quality=JPEG_QUALITY, subsampling=0)
                    else:
                        image.save(os.path.join(images, f"{stem}.png"))
                    colorize(np.asarray(example["segmentation"])).save(os.path.join(masks, f"{stem}.png"))
                    bar.update(1)
        if replace:  # swap, then delete the old export: at every moment OUT_DIR is a complete export or absent
            old = f"{out_dir}.old-{os.getpid()}"
            os.rename(out_dir, old)
            try:
                os.rename(staging, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out_dir)  # onto nothing or an empty directory
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, DataError):
            raise DataError(f"{out_dir}: cannot write ({e.strerror or e})") from e
        raise
    return counts
