"""Writing a registered dataset out in the folder format: image files, palette-PNG masks and ``classes.txt``.

::

    OUT_DIR/
      classes.txt             one class per line, ``name R G B`` (VOC palette colours), last line ``void 224 224 192``
      images/train/<stem>.png (or .jpg: quality 95, no chroma subsampling): the dataset's RGB image
      images/val/<stem>.png   the dataset's evaluation split is written as ``val``
      masks/train/<stem>.png  palette PNG: pixel index = class index, 255 = void (VOC colours)
      masks/val/<stem>.png

``<stem>`` is the example's ``file_name`` (path separators replaced by ``_``; ``_2``, ``_3``, ... if one
repeats). The folder is written as ``OUT_DIR.partial`` beside it and renamed to ``OUT_DIR`` only when
complete, so an interrupted export never leaves a folder that looks complete. Each example's image and mask
are written whole, as a pair (:func:`fcn_jax.io.atomic_group`), and recorded in
``OUT_DIR.partial/.fcn-export.jsonl``: an export stopped by an interrupt or a full disk keeps its complete
examples there, and the same export run again continues from them (one of other settings starts afresh).
Nothing here imports TensorFlow (the dataset is read through :func:`fcn_jax.data.load_split`).
"""
from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Sequence

import numpy as np

from fcn_jax.data import DataError, dataset_meta, load_split
from fcn_jax.io import Manifest, WriteError, atomic_group, error_text, is_full_disk, write_text
from fcn_jax.preprocess import VOID

IMAGE_FORMATS = ("png", "jpg")
JPEG_QUALITY = 95
EVAL_FOLDER = "val"
_LAYOUT = {"classes.txt", "images", "masks"}
MANIFEST = ".fcn-export.jsonl"  # in OUT_DIR.partial while the export runs: the settings, one line per example


class ExportInterrupted(KeyboardInterrupt):
    """An export stopped by SIGINT / SIGTERM (``args[0]``: the signal number); :attr:`message` says how many
    examples are complete in the unfinished folder, which the same export run again continues."""

    def __init__(self, signum: int, message: str):
        super().__init__(signum, message)
        self.signum, self.message = signum, message


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
    if "classes.txt" not in entries or not entries <= _LAYOUT | {MANIFEST}:
        raise DataError(f"{out_dir}: exists and is not an exported dataset folder (classes.txt, images/, masks/ "
                        f"only); not overwriting it")
    return True


def export_folder(name: str, out_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                  splits: Sequence[str] | None = None, image_format: str = "png", limit: int | None = None,
                  overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], None] | None = None) -> dict[str, int]:
    """Writes dataset ``name``'s ``splits`` (default: its train and evaluation splits) to ``out_dir`` in the
    folder format (module docstring), building the dataset in ``data_dir`` first if needed.

    ``image_format``: 'png' (lossless) or 'jpg' (quality 95, 4:4:4); ``limit``: at most this many examples per
    split (the first ones); ``overwrite``: replace an earlier export at ``out_dir`` (anything else there is
    refused). Returns {folder: number of examples written}, e.g. ``{'train': 48, 'val': 16}``. Raises
    DataError (one line) for an unknown dataset or split, a bad option or an ``out_dir`` not to write;
    :class:`~fcn_jax.io.WriteError` (one line: what is complete) when a file cannot be written (a full
    disk) and :class:`ExportInterrupted` on SIGINT / SIGTERM, both keeping the complete examples in
    ``OUT_DIR.partial`` for the next run. ``log``: told when an unfinished export is continued.
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
    total = sum(counts.values())
    settings = {"dataset": meta.name, "data_dir": None if data_dir is None else os.path.realpath(data_dir),
                "splits": list(splits), "image_format": image_format, "limit": limit}
    staging = f"{out_dir}.partial"
    manifest = _staging_manifest(staging, settings)
    done = 0
    try:
        if manifest.exists:
            done = sum(manifest.complete(key) is not None for key in manifest.entries)
            if log is not None:
                log(f"continuing the unfinished export in {staging}: {done} of {total} examples are complete "
                    f"already (skipped)")
        else:  # the record first: a folder without one is never taken for an unfinished export
            os.makedirs(staging, exist_ok=True)
            manifest.begin(settings)
        write_text(os.path.join(staging, "classes.txt"), classes_text(meta.class_names))
        with tqdm(total=total, initial=done, desc="export", unit="img", disable=not progress,
                  dynamic_ncols=True) as bar:
            for split, folder in zip(splits, folders):
                images, masks = (os.path.join(staging, kind, folder) for kind in ("images", "masks"))
                recorded = {k: e for k, e in manifest.entries.items() if k.startswith(f"{folder}/")}
                used = {e["stem"] for e in recorded.values() if isinstance(e.get("stem"), str)}
                for index in range(counts[folder]):
                    key = f"{folder}/{index}"
                    if manifest.complete(key) is not None:
                        continue
                    example = sources[split][index]
                    entry = recorded.get(key)
                    stem = entry["stem"] if entry is not None and isinstance(entry.get("stem"), str) else \
                        _stem(example["file_name"], folder, index, used)
                    image = Image.fromarray(np.asarray(example["image"], np.uint8))
                    mask = colorize(np.asarray(example["segmentation"]))
                    targets = [os.path.join(images, f"{stem}.{image_format}"), os.path.join(masks, f"{stem}.png")]
                    def record(key: str = key, targets: list[str] = targets, stem: str = stem) -> None:
                        nonlocal done
                        manifest.add(key, targets, stem=stem)
                        done += 1  # inside the group's commit: an interrupt never leaves it uncounted

                    with atomic_group(targets, record) as temps:
                        if image_format == "jpg":
                            image.save(temps[0], format="JPEG", quality=JPEG_QUALITY, subsampling=0)
                        else:
                            image.save(temps[0], format="PNG")
                        mask.save(temps[1], format="PNG")
                    bar.update(1)
        for folder in folders:  # a split with no example still gets its (empty) folders
            for kind in ("images", "masks"):
                os.makedirs(os.path.join(staging, kind, folder), exist_ok=True)
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
        Manifest(out_dir, MANIFEST).remove()  # complete: the export is the folder itself now
    except KeyboardInterrupt as e:
        signum = e.args[0] if e.args and isinstance(e.args[0], int) else int(signal.SIGINT)
        raise ExportInterrupted(signum, _kept(staging, manifest, done, total, "run the same command again to "
                                              "continue")) from None
    except OSError as e:
        again = "free space and run the same command again to continue" if is_full_disk(e) else \
            "run the same command again to continue"
        raise WriteError(f"{out_dir}: cannot write ({error_text(e)}); "
                         f"{_kept(staging, manifest, done, total, again)}") from e
    return counts


def _staging_manifest(staging: str, settings: dict) -> Manifest:
    """The record of an unfinished export in ``staging``: continued if made with ``settings``; an unfinished
    export of other settings is discarded; a ``staging`` that is no unfinished export is refused."""
    if not os.path.lexists(staging):
        return Manifest(staging, MANIFEST)
    manifest = Manifest(staging, MANIFEST)
    if not os.path.isdir(staging) or not (manifest.exists or not os.listdir(staging)):
        raise DataError(f"{staging}: exists and is not an unfinished export (no {MANIFEST}); move it away")
    if manifest.exists and not manifest.differences(settings):
        return manifest
    shutil.rmtree(staging)
    return Manifest(staging, MANIFEST)


def _discard(staging: str, manifest: Manifest) -> None:
    """Removes ``staging`` if it holds no complete example (nothing worth keeping)."""
    if not any(manifest.complete(key) is not None for key in manifest.entries):
        shutil.rmtree(staging, ignore_errors=True)


def _kept(staging: str, manifest: Manifest, done: int, total: int, again: str) -> str:
    """What an export stopped half way leaves: its complete examples in ``staging``, or nothing."""
    _discard(staging, manifest)
    if not os.path.isdir(staging):
        return "nothing was written"
    return f"{done} of {total} examples are complete in {staging}; {again}"
