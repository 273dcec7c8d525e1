"""tfds builder ``nyud``: NYU Depth v2 (NYUDv2), the 40-class RGB-D task of Gupta et al., as the FCN reference reads it.

Source (downloaded by hand; see :func:`manual_download_instructions`): the reference's prepared
NYUDv2 (``nyud.tar.gz``, from Gupta et al.'s data) laid out as its ``data/nyud``::

    data/images/img_<id>.png      colour, RGB 8-bit
    data/hha/img_<id>.png         HHA encoding of depth (Gupta et al. ECCV 2014), 3 x 8-bit
    data/depth/img_<id>.png       depth, 16-bit, millimetres
    segmentation/img_<id>.mat     field ``segmentation``: 0 unlabelled, 1..40 the classes
    train.txt, val.txt, test.txt  split lists of ids (381 / 414 / 654); trainval.txt optional

Configs (split sizes checked unless ``verify_split_sizes=False``; list order kept):

- ``trainval_test`` (the reference's protocol, Gupta et al.'s 795 / 654 split): train = ``trainval.txt``
  if present, else ``train.txt`` followed by ``val.txt`` (795); validation = ``test.txt`` (654).
- ``train_val``: train = ``train.txt`` (381), validation = ``val.txt`` (414), for choices made without
  touching the test images.

Labels, exactly as ``nyud_layers.py`` shifts them (uint8, ``label - 1``): 1..40 -> 0..39 and 0
(unlabelled) -> 255 (void); any other value stops the build (:class:`DataError` naming the file and
value). Classes: :data:`NYUD_CLASSES`, the reference's ``data/nyud/classes.txt``.

Examples: ``image`` (H, W, 3) uint8 RGB, ``hha`` (H, W, 3) uint8 (channels as stored), ``depth``
(H, W) uint16, the raw millimetres, ``segmentation`` (H, W) uint8 0..39 / 255, ``file_name`` (the
file stem, ``img_<id>``). Preprocessing of the reference, for the streams it feeds: colour RGB -> BGR
minus :data:`MEAN_BGR`; HHA minus :data:`MEAN_HHA` in the stored channel order (not flipped); depth
``log(depth) - MEAN_LOG_DEPTH`` (:func:`log_depth`; natural log of the millimetres, so a 0 would be
-inf). The input pipeline reads ``image``, ``segmentation`` and ``file_name`` only.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT, DataError
from fcn_jax.data.pascal_context import (Item, ManualSource, ManualSourceBuilder, ManualSourceConfig, check_same_size,
                                         check_values, list_file, read_mat_field, read_rgb, source_line)
from fcn_jax.data.voc import read_ids
from fcn_jax.preprocess import VOID

NYUD_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
    "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
    "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box", "whiteboard",
    "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure", "otherfurniture",
    "otherprop",
)
# nyud_layers.py: mean_bgr, mean_hha, mean_logd.
MEAN_BGR: tuple[float, float, float] = (116.190, 97.203, 92.318)
MEAN_HHA: tuple[float, float, float] = (132.431, 94.076, 118.477)
MEAN_LOG_DEPTH = 7.844

_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I")


def log_depth(depth: np.ndarray) -> np.ndarray:
    """The reference's depth input: float32 ``log(depth) - MEAN_LOG_DEPTH`` of the raw (H, W) depth."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(depth, np.float32)) - np.float32(MEAN_LOG_DEPTH)


def _is_root(d: Path) -> bool:
    return (d / "data" / "images").is_dir() and (d / "segmentation").is_dir()


SOURCE = ManualSource(
    key="nyud", archives=("nyud.tar.gz",),
    url="http://dl.caffe.berkeleyvision.org/nyud.tar.gz", size="",
    members=(r"(?:^|/)data/(?:images|hha|depth)/img_[^/]+\.png$|(?:^|/)segmentation/img_[^/]+\.mat$"
             r"|(?:^|/)(?:train|val|test|trainval)\.txt$"),
    is_root=_is_root, layout="data/{images,hha,depth}/img_<id>.png + segmentation/img_<id>.mat")


def manual_download_instructions() -> str:
    return ("Put this (archive, or its extracted tree) in the manual directory (`manual_dir`, default\n"
            "<data_dir>/downloads/manual):\n"
            f"  {source_line(SOURCE)}\n"
            "(the FCN reference's prepared NYUDv2; its split lists train.txt, val.txt, test.txt are also at\n"
            "https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data/nyud and may sit beside data/ or\n"
            "in the manual directory). The address is the one the reference's README gives and may no longer\n"
            "answer; the original data (other layout): http://people.eecs.berkeley.edu/~sgupta/cvpr13/data.tgz\n")


def read_depth(path: Path) -> np.ndarray:
    """(H, W) uint16 raw depth of a 16-bit single-channel PNG; DataError naming it otherwise."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            depth = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: cannot read depth image ({e})") from e
    if mode not in _DEPTH_MODES or depth.ndim != 2:
        raise DataError(f"{path}: expected a 16-bit single-channel depth PNG, got mode {mode}")
    if depth.dtype != np.uint16:
        if depth.size and (depth.min() < 0 or depth.max() > np.iinfo(np.uint16).max):
            raise DataError(f"{path}: depth values outside 0..65535")
        depth = depth.astype(np.uint16)
    return depth


def read_hha(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 HHA, channels as stored; DataError naming the file unless it is a 3 x 8-bit image."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            hha = np.asarray(im)
    except OSError as e:
        raise DataError(f"{path}: cannot read HHA image ({e})") from e
    if mode != "RGB":
        raise DataError(f"{path}: expected a 3-channel 8-bit HHA PNG, got mode {mode}")
    return hha


def segmentation_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) uint8: 1..40 -> 0..39, 0 -> 255 (void)."""
    check_values(raw, np.arange(0, len(NYUD_CLASSES) + 1), path, "label")
    return np.where(raw == 0, VOID, raw - 1).astype(np.uint8)


class Nyud(ManualSourceBuilder):
    """NYUDv2, 40 classes, colour + HHA + depth; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: trainval_test (the reference's), train_val."}
    BUILDER_CONFIGS = [
        ManualSourceConfig(name="trainval_test", split_sizes={TRAIN_SPLIT: 795, EVAL_SPLIT: 654},
                           description="The reference's protocol: trainval (795) / test (654)."),
        ManualSourceConfig(name="train_val", split_sizes={TRAIN_SPLIT: 381, EVAL_SPLIT: 414},
                           description="train (381) / val (414): tuning without the test images."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions()
    SOURCES = (SOURCE,)
    CLASS_NAMES = NYUD_CLASSES
    EXTRA_FEATURES = {
        "hha": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
        "depth": tfds.features.Tensor(shape=(None, None), dtype=np.uint16, encoding="zlib"),
    }
    EXTRA_METADATA = {"mean_bgr": list(MEAN_BGR), "mean_hha": list(MEAN_HHA), "mean_log_depth": MEAN_LOG_DEPTH}
    DESCRIPTION = ("NYUDv2 40-class segmentation (Gupta et al. 2013; 255 = unlabelled) with colour `image`, "
                   "`hha` and raw `depth` (uint16 mm).")
    HOMEPAGE = "https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html"

    def _plan(self, roots: Mapping[str, Path], manual: Path) -> dict[str, list[Item]]:
        root = roots["nyud"]

        def ids(name: str) -> list[str]:
            return read_ids(list_file(name, root, manual))

        if self.builder_config.name == "train_val":
            train, validation = ids("train.txt"), ids("val.txt")
        else:
            trainval = next((d / "trainval.txt" for d in (root, manual) if (d / "trainval.txt").is_file()), None)
            train = read_ids(trainval) if trainval is not None else ids("train.txt") + ids("val.txt")
            validation = ids("test.txt")

        def item(image_id: str) -> Item:
            stem = f"img_{image_id}"
            return Item(stem, {"image": root / "data" / "images" / f"{stem}.png",
                               "hha": root / "data" / "hha" / f"{stem}.png",
                               "depth": root / "data" / "depth" / f"{stem}.png",
                               "label": root / "segmentation" / f"{stem}.mat"})

        return {TRAIN_SPLIT: [item(i) for i in train], EVAL_SPLIT: [item(i) for i in validation]}

    def _load(self, item: Item) -> dict[str, Any]:
        files = item.files
        image = read_rgb(files["image"])
        hha = read_hha(files["hha"])
        depth = read_depth(files["depth"])
        raw = read_mat_field(files["label"], "segmentation")
        for key, shape in (("hha", hha.shape), ("depth", depth.shape), ("label", raw.shape)):
            check_same_size(files[key], shape, files["image"], image.shape)
        return {"image": image, "hha": hha, "depth": depth, "segmentation": segmentation_label(raw, files["label"]),
                "file_name": item.id}
