"""Datasets: tfds builders (registered when this package is imported) and their metadata.

Dataset names: ``shapes`` (= ``shapes/default``; also ``shapes/tiny``, ``shapes/large``) and
``voc_segmentation/{sbd_fcn,voc2012,voc2012_aug}`` (``voc_segmentation`` alone = ``sbd_fcn``).
Every split is a random-access source of dicts ``{'image': (H, W, 3) uint8 RGB,
'segmentation': (H, W) uint8 (255 = void), 'file_name': bytes}``. The input pipeline that turns
a source into device batches is :mod:`fcn_jax.data.pipeline` (imported separately: it needs jax).
Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from typing import Any

from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT, DataError, SegmentationBuilder
from fcn_jax.preprocess import VOID
from fcn_jax.data.shapes import SHAPES_CLASSES, Shapes, ShapesConfig
from fcn_jax.data.voc import VOC_CLASSES, VocSegmentation, VocSegmentationConfig

__all__ = [
    "DataError", "DatasetMeta", "EVAL_SPLIT", "SHAPES_CLASSES", "SegmentationBuilder", "Shapes", "ShapesConfig",
    "TRAIN_SPLIT", "VOC_CLASSES", "VOID", "VocSegmentation", "VocSegmentationConfig", "dataset_meta",
    "get_builder", "load_split", "prepare",
]

_BUILDERS: dict[str, type[SegmentationBuilder]] = {"shapes": Shapes, "voc_segmentation": VocSegmentation}


def _known_names() -> str:
    return ", ".join(f"{n}/{c.name}" for n, cls in _BUILDERS.items() for c in cls.BUILDER_CONFIGS)


def get_builder(name: str, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None, **kwargs: Any) -> SegmentationBuilder:
    """The tfds builder for ``name`` ('dataset' or 'dataset/config'); nothing is built or read.

    ``kwargs`` go to the builder: e.g. ``config=ShapesConfig(...)`` for a custom shapes size,
    ``verify_split_sizes=False`` / ``download=False`` for ``voc_segmentation``.
    """
    dataset, _, config = name.partition("/")
    cls = _BUILDERS.get(dataset)
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
            manual_dir: str | os.PathLike | None = None, **kwargs: Any) -> SegmentationBuilder:
    """The builder for ``name``, built first (array_record files) if not yet complete on disk.

    Raises DataError (one line) when sources are missing or invalid.
    """
    return get_builder(name, data_dir, manual_dir, **kwargs).prepare()


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None,
               manual_dir: str | os.PathLike | None = None, **kwargs: Any):
    """Random-access source (``len``, ``[i]``) of example dicts of one split, preparing first if needed."""
    builder = prepare(name, data_dir, manual_dir, **kwargs)
    if split not in builder.info.splits:
        raise DataError(f"{name} has no split {split!r}; splits: {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split)


@dataclasses.dataclass(frozen=True)
class DatasetMeta:
    """What training and evaluation need to know about a dataset without reading it."""

    name: str  # canonical 'dataset/config'
    num_classes: int
    class_names: tuple[str, ...]
    splits: Mapping[str, int]  # {split: number of examples}, read-only
    train_split: str = TRAIN_SPLIT
    eval_split: str = EVAL_SPLIT


def dataset_meta(name: str, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> DatasetMeta:
    """Classes and split sizes of ``name``: from the built dataset if present, else from its config."""
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
