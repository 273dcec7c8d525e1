"""tfds builder ``sift_flow``: SIFT Flow (Liu et al. 2009), semantic + geometric labels, as the FCN reference reads it.

Source (downloaded by hand; see :func:`manual_download_instructions`): the SIFT Flow dataset
(``SiftFlowDataset.zip``) laid out as the reference's ``data/sift-flow``::

    Images/spatial_envelope_256x256_static_8outdoorcategories/<id>.jpg          256 x 256 colour
    SemanticLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat  field S: 0 unlabelled, 1..33
    GeoLabels/spatial_envelope_256x256_static_8outdoorcategories/<id>.mat       field S: -1 unlabelled, 1..3
    trainval.txt, test.txt                                                      the reference's split lists

The split lists are not part of the dataset's own archive: take them from the reference
(https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data/sift-flow); they may sit beside
``Images/`` or in the manual directory. They leave out the two images without annotations
(``highway_bost181``, ``street_urb506``): train = ``trainval.txt`` (2,486), validation = ``test.txt``
(200), in list order; checked unless ``verify_split_sizes=False``.

Labels, exactly as ``siftflow_layers.py`` shifts them (uint8, ``label - 1``): semantic S 1..33 ->
0..32 and 0 (unlabelled) -> 255 (void); geometric S -1 (unlabelled) and 0 -> 255, 1..3 -> 0..2. Any
other value stops the build (:class:`DataError` naming the file and value). The class order is the
reference's ``data/sift-flow/classes.txt`` (:data:`SIFT_FLOW_CLASSES`, :data:`GEOMETRIC_CLASSES`); where
a label file carries the dataset's own ``names`` list it is compared with that order (a warning if
they differ: the reference uses the values only). Three classes
(cow, desert, moon: :data:`ABSENT_FROM_TEST`) never occur in the test split; the reference scores the
semantic task from the confusion matrix without them.

Examples: ``image`` (256, 256, 3) uint8 RGB, ``segmentation`` (256, 256) uint8 0..32 / 255 (semantic),
``geometric`` (256, 256) uint8 0..2 / 255, ``file_name`` (the id). Preprocessing of the reference:
BGR mean :data:`MEAN_BGR` (siftflow_layers.py).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from fcn_jax.classes import GEOMETRIC_CLASSES
from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT
from fcn_jax.data.pascal_context import (Item, ManualSource, ManualSourceBuilder, ManualSourceConfig, check_same_size,
                                         check_values, list_file, read_mat_field, read_rgb, source_line)
from fcn_jax.data.voc import read_ids
from fcn_jax.preprocess import VOID

log = logging.getLogger(__name__)

SIFT_FLOW_CLASSES: tuple[str, ...] = (
    "awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert", "door",
    "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock", "sand",
    "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window",
)
ABSENT_FROM_TEST: tuple[str, ...] = ("cow", "desert", "moon")
UNANNOTATED: tuple[str, ...] = ("highway_bost181", "street_urb506")
MEAN_BGR: tuple[float, float, float] = (114.578, 115.294, 108.353)  # siftflow_layers.py `self.mean`
SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"


def _is_root(d: Path) -> bool:
    return (d / "Images" / SUBDIR).is_dir() and (d / "SemanticLabels" / SUBDIR).is_dir()


SOURCE = ManualSource(
    key="siftflow", archives=("SiftFlowDataset.zip",),
    url="http://www.cs.unc.edu/~jtighe/Papers/ECCV10/siftflow/SiftFlowDataset.zip", size="",
    members=(r"(?:^|/)(?:Images|SemanticLabels|GeoLabels)/" + SUBDIR + r"/[^/]+\.(?:jpg|mat)$"
             r"|(?:^|/)(?:trainval|test)\.txt$"),
    is_root=_is_root, layout=f"{{Images,SemanticLabels,GeoLabels}}/{SUBDIR}")


def manual_download_instructions() -> str:
    return ("Put this (archive, or its extracted tree) in the manual directory (`manual_dir`, default\n"
            "<data_dir>/downloads/manual):\n"
            f"  {source_line(SOURCE)}\n"
            "and the reference's split lists trainval.txt and test.txt (from\n"
            "https://github.com/shelhamer/fcn.berkeleyvision.org/tree/master/data/sift-flow) beside Images/ or\n"
            "in the manual directory. (The address is the one the reference's README gives; if it no longer\n"
            "answers, any copy of SiftFlowDataset.zip with this layout will do.)\n")


def _mat_names(path: Path) -> list[str] | None:
    """The ``names`` list of a SIFT Flow label file, if it has one."""
    try:
        names = scipy.io.loadmat(path, squeeze_me=True).get("names")
    except (ValueError, TypeError, OSError, NotImplementedError):
        return None
    if names is None:
        return None
    return [str(n).strip() for n in np.atleast_1d(names)]


def semantic_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) uint8: S 1..33 -> 0..32, 0 -> 255 (void)."""
    check_values(raw, np.arange(0, len(SIFT_FLOW_CLASSES) + 1), path, "semantic label")
    return np.where(raw == 0, VOID, raw - 1).astype(np.uint8)


def geometric_label(raw: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) uint8: S 1..3 -> 0..2, -1 and 0 -> 255 (void)."""
    check_values(raw, np.arange(-1, len(GEOMETRIC_CLASSES) + 1), path, "geometric label")
    return np.where(raw <= 0, VOID, raw - 1).astype(np.uint8)


class SiftFlow(ManualSourceBuilder):
    """SIFT Flow, 33 semantic + 3 geometric classes; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: the FCN reference's trainval / test split."}
    BUILDER_CONFIGS = [ManualSourceConfig(
        name="default", split_sizes={TRAIN_SPLIT: 2486, EVAL_SPLIT: 200},
        description="The reference's lists: trainval (2,486) / test (200).")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions()
    SOURCES = (SOURCE,)
    CLASS_NAMES = SIFT_FLOW_CLASSES
    EXTRA_FEATURES = {"geometric": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib")}
    EXTRA_METADATA = {"geometric_class_names": list(GEOMETRIC_CLASSES), "mean_bgr": list(MEAN_BGR),
                      "absent_from_test": list(ABSENT_FROM_TEST)}
    DESCRIPTION = ("SIFT Flow: 33 semantic classes (255 = unlabelled) in `segmentation` and 3 geometric classes "
                   "(sky, horizontal, vertical; 255 = unlabelled) in `geometric`.")
    HOMEPAGE = "http://people.csail.mit.edu/celiu/LabelTransfer/"

    def _plan(self, roots: Mapping[str, Path], manual: Path) -> dict[str, list[Item]]:
        root = roots["siftflow"]

        def item(image_id: str) -> Item:
            return Item(image_id, {"image": root / "Images" / SUBDIR / f"{image_id}.jpg",
                                   "semantic": root / "SemanticLabels" / SUBDIR / f"{image_id}.mat",
                                   "geometric": root / "GeoLabels" / SUBDIR / f"{image_id}.mat"})

        plan = {TRAIN_SPLIT: [item(i) for i in read_ids(list_file("trainval.txt", root, manual))],
                EVAL_SPLIT: [item(i) for i in read_ids(list_file("test.txt", root, manual))]}
        first = next((items[0] for items in plan.values() if items), None)
        if first is not None:  # the class order of the labels, where the files name it
            for key, expected in (("semantic", SIFT_FLOW_CLASSES), ("geometric", GEOMETRIC_CLASSES)):
                names = _mat_names(first.files[key]) if first.files[key].is_file() else None
                if names is not None and tuple(names) != expected:  # names are metadata: the values rule
                    log.warning("%s: class names %s differ from the reference's %s", first.files[key], names,
                                list(expected))
        return plan

    def _load(self, item: Item) -> dict[str, Any]:
        image = read_rgb(item.files["image"])
        out = {"image": image, "file_name": item.id}
        for key, feature, convert in (("semantic", "segmentation", semantic_label),
                                      ("geometric", "geometric", geometric_label)):
            path = item.files[key]
            raw = read_mat_field(path, "S")
            check_same_size(path, raw.shape, item.files["image"], image.shape)
            out[feature] = convert(raw, path)
        return out
