"""Datasets: tfds builders, folders of files, their metadata.

Dataset names: ``shapes`` (= ``shapes/default``; also ``shapes/tiny``, ``shapes/large``),
``voc_segmentation/{sbd_fcn,voc2012,voc2012_aug}`` (``voc_segmentation`` alone = ``sbd_fcn``),
``pascal_context`` (= ``/context59``), ``sift_flow`` (= ``/default``), ``nyud/{trainval_test,train_val}``, and
``folder:DIR``, your own images and masks read directly from a directory (no build step; a changed
folder is read again), laid out as (details in :mod:`fcn_jax.data.folder`)::

    DIR/classes.txt          optional: one class per line, `name` or `name R G B` (+ optional last `void R G B`)
    DIR/images/<stem>.<ext>  any format PIL reads
    DIR/masks/<stem>.png     palette or grayscale class indices (void 255), or RGB colours from classes.txt
    DIR/train.txt, val.txt   optional split lists; or images/{train,val}/ + masks/{train,val}/; else 90/10

with splits ``train`` and ``val``. Folder options (keyword ``void=`` the mask value of ignored pixels,
default 255; ``binary=True`` for 0 / non-zero masks) apply to folder datasets only.
Every split is a random-access source of dicts ``{'image': (H, W, 3) uint8 RGB,
'segmentation': (H, W) uint8 (255 = void), 'file_name': bytes (tfds) or str (folders)}``. The input
pipeline that turns a source into device batches is :mod:`fcn_jax.data.pipeline` (imported
separately: it needs jax). Nothing here imports TensorFlow.

TensorFlow Datasets is imported lazily: importing this package and everything on folder datasets
(:func:`load_split`, :func:`dataset_meta`, :func:`class_pixel_counts`, :func:`dataset_summary` of
``folder:DIR``, :mod:`fcn_jax.data.folder`) never import ``tensorflow_datasets``. The builder modules
(:mod:`~fcn_jax.data.shapes`, :mod:`~fcn_jax.data.voc`, :mod:`~fcn_jax.data.pascal_context`,
:mod:`~fcn_jax.data.sift_flow`, :mod:`~fcn_jax.data.nyud`; importing one registers its tfds builder) are
imported on first use of a tfds dataset name, or of a name defined in them (``from fcn_jax.data import
VocSegmentation``, ``SHAPES_CLASSES``, ``SegmentationBuilder``, ...: module ``__getattr__``, PEP 562).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import importlib
import os
import sys
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from fcn_jax.classes import GEOMETRIC_CLASSES, VOC_CLASSES
from fcn_jax.data.base import EVAL_SPLIT, TRAIN_SPLIT, DataError, disable_tfds_progress_bars
from fcn_jax.data.folder import FolderDataset, FolderSource, folder_root, is_folder, load_folder, read_mask
from fcn_jax.preprocess import VOID

if TYPE_CHECKING:  # imported on demand (they import tensorflow_datasets): see __getattr__
    from fcn_jax.data.common import SegmentationBuilder
    from fcn_jax.data.nyud import NYUD_CLASSES, Nyud
    from fcn_jax.data.pascal_context import CONTEXT59_CLASSES, PascalContext
    from fcn_jax.data.shapes import SHAPES_CLASSES, Shapes, ShapesConfig
    from fcn_jax.data.sift_flow import SIFT_FLOW_CLASSES, SiftFlow
    from fcn_jax.data.voc import VocSegmentation, VocSegmentationConfig

__all__ = [
    "CONTEXT59_CLASSES", "GEOMETRIC_CLASSES", "NYUD_CLASSES", "Nyud", "PascalContext", "SIFT_FLOW_CLASSES", "SiftFlow",
    "DataError", "DatasetMeta", "EVAL_SPLIT", "FolderDataset", "FolderSource", "SHAPES_CLASSES",
    "SegmentationBuilder", "Shapes", "ShapesConfig", "TRAIN_SPLIT", "VOC_CLASSES", "VOID", "VocSegmentation",
    "VocSegmentationConfig", "class_pixel_counts", "dataset_files", "dataset_meta", "dataset_summary", "folder_root",
    "get_builder", "is_folder", "load_folder", "load_split", "prepare", "read_mask",
]

# Public names that live in modules importing tensorflow_datasets: {name: submodule}, imported on demand.
_LAZY_NAMES = {
    "SegmentationBuilder": "common",
    "NYUD_CLASSES": "nyud", "Nyud": "nyud",
    "CONTEXT59_CLASSES": "pascal_context", "PascalContext": "pascal_context",
    "SHAPES_CLASSES": "shapes", "Shapes": "shapes", "ShapesConfig": "shapes",
    "SIFT_FLOW_CLASSES": "sift_flow", "SiftFlow": "sift_flow",
    "VocSegmentation": "voc", "VocSegmentationConfig": "voc",
}
# Submodules that importing this package used to make attributes (``fcn_jax.data.voc``, ...).
_LAZY_MODULES = ("common", "nyud", "pascal_context", "shapes", "sift_flow", "voc")
# Dataset name -> (module, builder class); importing the module registers the builder with tfds.
_BUILDER_CLASSES = {"shapes": ("shapes", "Shapes"), "voc_segmentation": ("voc", "VocSegmentation"),
                    "pascal_context": ("pascal_context", "PascalContext"), "sift_flow": ("sift_flow", "SiftFlow"),
                    "nyud": ("nyud", "Nyud")}


def _submodule(name: str) -> types.ModuleType:
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str) -> Any:
    """PEP 562: the names of :data:`_LAZY_NAMES` and the builder submodules, imported on first access."""
    if name in _LAZY_NAMES:
        value = getattr(_submodule(_LAZY_NAMES[name]), name)
    elif name in _LAZY_MODULES:
        value = _submodule(name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_MODULES))


@functools.cache
def _builders() -> dict[str, type[SegmentationBuilder]]:
    """{dataset name: builder class}; the first call imports tfds and every builder module (registering them)."""
    return {name: getattr(_submodule(module), cls) for name, (module, cls) in _BUILDER_CLASSES.items()}


def _known_names() -> str:
    return ", ".join(f"{n}/{c.name}" for n, cls in _builders().items() for c in cls.BUILDER_CONFIGS) + ", folder:DIR"


def _check_tfds_options(void: int, binary: bool) -> None:
    """Folder options given for a tfds dataset are an error (they would silently do nothing)."""
    if binary or isinstance(void, bool) or void != VOID:
        raise DataError("--binary-masks / --void-value apply to folder: datasets only")


def _folder(name: str, void: int, binary: bool, kwargs: Mapping[str, Any], progress: bool = True) -> FolderDataset:
    """The (cached) scanned folder of ``folder:DIR``; builder options are refused."""
    if kwargs:
        raise DataError(f"{name}: folder datasets take no builder options (got {', '.join(sorted(kwargs))})")
    return load_folder(folder_root(name), void=void, binary=binary, progress=progress)


def disable_progress_bars() -> None:
    """No progress bars while datasets are built or scanned (tfds's own included): ``--no-progress``.

    Does not import tfds: tfds's bars are switched off when it is imported, if it is not yet."""
    disable_tfds_progress_bars()


def get_builder(name: str, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None, **kwargs: Any) -> SegmentationBuilder:
    """The tfds builder for ``name`` ('dataset' or 'dataset/config'); nothing is built or read.

    ``kwargs`` go to the builder: e.g. ``config=ShapesConfig(...)`` for a custom shapes size,
    ``verify_split_sizes=False`` / ``download=False`` for ``voc_segmentation``. Folder datasets have no
    builder (DataError): use :func:`load_split` / :func:`dataset_meta`.
    """
    if is_folder(name):
        raise DataError(f"{name}: folder datasets are read directly, not through a tfds builder; use load_split "
                        "or dataset_meta")
    dataset, _, config = name.partition("/")
    cls = _builders().get(dataset)
    if cls is None:
        raise DataError(f"unknown dataset {name!r}; known: {_known_names()}")
    if config:
        if "config" in kwargs:
            raise DataError(f"dataset {name!r} names a config and config= is given too")
        if config not in {c.name for c in cls.BUILDER_CONFIGS}:
            raise DataError(f"unknown config {config!r} of {dataset}; known: {_known_names()}")
        kwargs["config"] = config
    return cls(data_dir=os.fspath(data_dir) if data_dir else None, manual_dir=manual_dir, **kwargs)


def prepare(name: str, data_dir: str | os.PathLike | None = None,
            manual_dir: str | os.PathLike | None = None, *, void: int = VOID, binary: bool = False,
            **kwargs: Any) -> SegmentationBuilder | FolderDataset:
    """The builder for ``name``, built first (array_record files) if not yet complete on disk; for
    ``folder:DIR`` the scanned :class:`FolderDataset` (``data_dir`` and ``manual_dir`` do not apply).

    Raises DataError (one line) when sources are missing or invalid.
    """
    if is_folder(name):
        return _folder(name, void, binary, kwargs)
    _check_tfds_options(void, binary)
    return get_builder(name, data_dir, manual_dir, **kwargs).prepare()


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None, *, void: int = VOID, binary: bool = False,
               progress: bool = True, **kwargs: Any):
    """Random-access source (``len``, ``[i]``) of example dicts of one split, preparing first if needed.

    ``void`` / ``binary``: how a folder dataset's masks are read (see :mod:`fcn_jax.data.folder`);
    ``progress``: a bar while a large folder is scanned.
    """
    if is_folder(name):
        return _folder(name, void, binary, kwargs, progress).source(split)
    builder = prepare(name, data_dir, manual_dir, void=void, binary=binary, **kwargs)
    if split not in builder.info.splits:
        raise DataError(f"{name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """What training and evaluation need to know about a dataset without reading it."""

    name: str  # canonical 'dataset/config', or 'folder:<absolute root>'
    num_classes: int
    class_names: tuple[str, ...]
    splits: Mapping[str, int]  # {split: number of examples}, read-only
    train_split: str = TRAIN_SPLIT
    eval_split: str = EVAL_SPLIT
    colours: tuple[tuple[int, int, int], ...] | None = None  # RGB per class where the dataset defines them
    description: str = ""  # a few lines for the console (folders: FolderDataset.describe())


def dataset_meta(name: str, data_dir: str | os.PathLike | None = None, *, void: int = VOID, binary: bool = False,
                 progress: bool = True, **kwargs: Any) -> DatasetMeta:
    """Classes and split sizes of ``name``: from the built dataset if present, else from its config;
    for ``folder:DIR`` from the scan of the folder (train split ``train``, eval split ``val``; ``progress``:
    a bar while a large folder is scanned)."""
    if is_folder(name):
        folder = _folder(name, void, binary, kwargs, progress)
        return DatasetMeta(name=f"folder:{folder.root}", num_classes=folder.num_classes,
                           class_names=folder.class_names, splits=types.MappingProxyType(folder.splits),
                           train_split="train", eval_split="val", colours=folder.colours,
                           description=folder.describe())
    _check_tfds_options(void, binary)
    builder = get_builder(name, data_dir, **kwargs)
    if builder.is_prepared():
        splits = {split: info.num_examples for split, info in builder.info.splits.items()}
    else:
        splits = dict(builder.expected_split_sizes())
    return DatasetMeta(
        name=f"{builder.name}/{builder.builder_config.name}",
        num_classes=len(builder.CLASS_NAMES),
        class_names=tuple(builder.CLASS_NAMES),
        splits=types.MappingProxyType(splits),
    )


def dataset_summary(name: str, data_dir: str | os.PathLike | None = None, *, void: int = VOID,
                    binary: bool = False, **kwargs: Any) -> dict[str, Any]:
    """JSON-ready description of a dataset: for folders :meth:`FolderDataset.summary` (classes, colours,
    void, how the split was made, the stems of each split, pixel counts, and ``fingerprint``: the number of
    examples and a digest of :func:`dataset_files`); for tfds datasets its name, classes and split sizes."""
    if is_folder(name):
        return _folder(name, void, binary, kwargs).summary()
    meta = dataset_meta(name, data_dir, void=void, binary=binary, **kwargs)
    return {"name": meta.name, "num_classes": meta.num_classes, "class_names": list(meta.class_names),
            "splits": dict(meta.splits), "train_split": meta.train_split, "eval_split": meta.eval_split}


def dataset_files(name: str, data_dir: str | os.PathLike | None = None, *, void: int = VOID, binary: bool = False,
                  **kwargs: Any) -> dict[str, str] | None:
    """The per-file fingerprints of a folder dataset as scanned (:meth:`FolderDataset.file_table`: one per
    example, keyed by its image's path, and one per classes / split-list file); None for tfds datasets,
    whose prepared files do not change."""
    if is_folder(name):
        return _folder(name, void, binary, kwargs).file_table()
    return None


def class_pixel_counts(name: str, split: str, data_dir: str | os.PathLike | None = None, *, void: int = VOID,
                       binary: bool = False, progress: bool = True, **kwargs: Any) -> np.ndarray:
    """(C,) int64: labelled (non-void) pixels of each class in ``split``. Folders: from the scan (no
    file is read again); tfds datasets: by reading every example's ``segmentation`` (a progress bar on
    stderr unless ``progress=False``)."""
    if is_folder(name):
        folder = _folder(name, void, binary, kwargs, progress=progress)
        if split not in folder.pixel_counts:
            raise DataError(f"{name} has no split {split!r}; splits: {sorted(folder.pixel_counts)}")
        return folder.pixel_counts[split].copy()
    from tqdm import tqdm

    meta = dataset_meta(name, data_dir, void=void, binary=binary, **kwargs)
    source = load_split(name, split, data_dir, **kwargs)
    num_classes = meta.num_classes

    def histogram(index: int) -> np.ndarray:
        return np.bincount(np.asarray(source[index]["segmentation"], np.uint8).ravel(), minlength=256)

    total = np.zeros(256, np.int64)
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        counts = pool.map(histogram, range(len(source)))
        for counts_i in tqdm(counts, total=len(source), desc=f"counting pixels of {name} {split}", unit="img",
                             file=sys.stderr, disable=not progress, dynamic_ncols=True):
            total += counts_i
    bad = np.flatnonzero(total[num_classes:VOID])
    if bad.size:
        raise DataError(f"{name} {split}: label value {num_classes + int(bad[0])} is outside 0..{num_classes - 1} "
                        f"and {VOID} (void)")
    return total[:num_classes].copy()
