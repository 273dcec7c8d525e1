"""tfds builder ``pascal_context``: PASCAL-Context, the 59-class task the FCN reference trains on.

Sources (both downloaded by hand; see :func:`manual_download_instructions`):

- PASCAL VOC 2010 trainval (``VOCtrainval_03-May-2010.tar``): ``VOC2010/JPEGImages/<id>.jpg`` and the
  split lists ``VOC2010/ImageSets/Main/{train,val}.txt``;
- the PASCAL-Context annotations (``trainval.tar.gz``): ``trainval/<id>.mat`` with field ``LabelMap``,
  (H, W) uint16 values 1..459 indexing the full label list ``labels.txt`` (``"<n>: <name>"`` lines);
  optionally ``59_labels.txt``, the 59 names of the task.

Labels, exactly as the reference's ``pascalcontext_layers.py`` derives them: names are compared with
every space removed; the 59 task names are looked up in ``labels.txt`` (``diningtable``, ``bedcloth``
and ``clothes`` under their full-list names ``table``, ``bedclothes`` and ``cloth``); the pixels of the
k-th task class (1-based, in ``59_labels.txt`` order) get label k, and **every other pixel gets 0 =
background**: the other 400 classes and LabelMap value 0 alike. No pixel is void (255): the
reference's loss ignores 255, but its labels never contain it. The 60 classes are
:data:`CONTEXT59_CLASSES` (the reference's ``data/pascal-context/classes-59.txt``); the full-list
value of each task class is :data:`CONTEXT_LABEL_IDS`. When ``labels.txt`` (or ``59_labels.txt``)
is present the mapping is derived from it as the reference does (a warning if it differs from
:data:`CONTEXT_LABEL_IDS`); without it the built-in table is used. A LabelMap value above the length
of the full list stops the build (:class:`DataError` naming the file and value).

Splits (config ``context59``, the only one): train = VOC2010 ``ImageSets/Main/train.txt`` (4,998),
validation = ``val.txt`` (5,105), in list order; checked unless ``verify_split_sizes=False``.
Preprocessing of the reference: BGR mean :data:`MEAN_BGR` (pascalcontext_layers.py), VOC's mean
rounded to three decimals.

Examples: ``image`` (H, W, 3) uint8 RGB, ``segmentation`` (H, W) uint8 0..59, ``file_name`` (the VOC id).

This module also holds the handling of manually provided sources that ``sift_flow`` and ``nyud``
share (:class:`ManualSource`, :class:`ManualSourceBuilder`): each source is found, in order, as an
extracted tree anywhere up to three directories below the manual directory, as a finished earlier
extraction in ``<data_dir>/downloads/extracted/<archive>``, or as its archive (tar, tar.gz or zip) in
the manual directory or ``<data_dir>/downloads``, extracted (only the files needed) into that
directory and marked complete only once every member is written. Nothing is downloaded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT, DataError, SegmentationBuilder, segmentation_features
from fcn_jax.data.voc import read_ids

log = logging.getLogger(__name__)

CONTEXT59_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
    "bag", "bed", "bench", "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door",
    "fence", "floor", "flower", "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain",
    "platform", "sign", "plate", "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track",
    "tree", "truck", "wall", "water", "window", "wood",
)
# 59_labels.txt name -> labels.txt name, where they differ (pascalcontext_layers.py).
FULL_LIST_NAMES: dict[str, str] = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth"}
# LabelMap value (1-based line of labels.txt, 459 names) of task classes 1..59, in CONTEXT59_CLASSES order.
CONTEXT_LABEL_IDS: tuple[int, ...] = (
    2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427, 9, 18, 22, 33,
    44, 46, 68, 80, 85, 104, 115, 144, 158, 159, 162, 187, 189, 220, 232, 259, 260, 105, 296, 355, 295, 324,
    326, 349, 354, 360, 366, 19, 415, 420, 424, 440, 445, 454, 458,
)
NUM_FULL_LABELS = 459
MEAN_BGR: tuple[float, float, float] = (104.007, 116.669, 122.679)  # pascalcontext_layers.py `self.mean`

_COMPLETE_MARKER = ".extraction_complete"


# ------------------------------------------------------------------------------------------------
# Manually provided sources (shared with sift_flow and nyud).

@dataclasses.dataclass(frozen=True)
class ManualSource:
    """A source the user downloads: its archive names, address, the members to extract and how its
    extracted root directory is recognised."""

    key: str
    archives: tuple[str, ...]  # archive file names, any of which holds the source
    url: str  # where to get it (messages only)
    size: str  # approximate, "" if not known (messages only)
    members: str  # regex searched in archive member paths: the files to extract
    is_root: Callable[[Path], bool]  # whether a directory is the source's root
    layout: str  # what the root holds (messages only)


def find_root(directory: Path, is_root: Callable[[Path], bool], depth: int = 3) -> Path | None:
    """The first directory (breadth first, sorted) at most ``depth`` levels below ``directory``,
    itself included, for which ``is_root`` holds; None if there is none."""
    level = [directory] if directory.is_dir() else []
    for d in range(depth + 1):
        for candidate in level:
            if is_root(candidate):
                return candidate
        if d == depth:
            break
        children: list[Path] = []
        for parent in level:
            try:
                with os.scandir(parent) as entries:
                    children.extend(sorted(Path(e.path) for e in entries
                                           if e.is_dir() and not e.name.startswith(".")
                                           and not e.name.endswith(".partial")))
            except OSError:
                continue
        level = children
    return None


def extraction_matches(dest: Path, archive: Path | None) -> bool:
    """Whether ``dest`` holds a complete extraction of ``archive`` as it is now (same size and
    modification time; any complete extraction when ``archive`` is None)."""
    marker = dest / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    if archive is None:
        return True
    try:
        record = json.loads(marker.read_text())
        stat = archive.stat()
        return record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns
    except (ValueError, KeyError, TypeError, OSError):
        return False


def _safe_member(name: str) -> str | None:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return None if not parts or ".." in parts or name.startswith("/") else "/".join(parts)


def extract_members(archive: Path, members: str, dest: Path) -> int:
    """Extracts the files of ``archive`` (tar of any compression, or zip) whose path matches the regex
    ``members`` into ``dest``, keeping their paths; ``dest`` is marked complete only once all are
    written (a partial extraction is discarded and redone). Returns the number of files written."""
    if extraction_matches(dest, archive):
        return -1
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pattern = re.compile(members)
    count = 0
    log.info("extracting %s into %s", archive, dest)

    def write(name: str, fin: Any) -> None:
        nonlocal count
        target = partial / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        count += 1

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = _safe_member(info.filename)
                    if not info.is_dir() and name and pattern.search(name):
                        with zf.open(info) as fin:
                            write(name, fin)
        else:
            with tarfile.open(archive, "r|*") as tar:
                for member in tar:
                    name = _safe_member(member.name) if member.isfile() else None
                    if name and pattern.search(name):
                        with tar.extractfile(member) as fin:
                            write(name, fin)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"cannot read archive {archive}: {e}") from e
    stat = archive.stat()
    partial.mkdir(parents=True, exist_ok=True)
    (partial / _COMPLETE_MARKER).write_text(json.dumps({"archive": str(archive.resolve()), "size": stat.st_size,
                                                        "mtime_ns": stat.st_mtime_ns, "files": count}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return count


def resolve_source(src: ManualSource, manual: Path, download_dir: Path) -> Path | None:
    """The root directory of ``src`` (see the module docstring for the order); None if not found.
    Raises DataError when an archive is unreadable or holds no such root."""
    root = find_root(manual, src.is_root)
    if root is not None:
        return root
    for name in src.archives:
        archive = next((p for p in (manual / name, download_dir / name) if p.is_file()), None)
        dest = download_dir / "extracted" / name
        if archive is None and not extraction_matches(dest, None):
            continue
        if archive is not None:
            extract_members(archive, src.members, dest)
        root = find_root(dest, src.is_root)
        if root is None:
            raise DataError(f"{archive or dest} holds no {src.layout}; is it {src.url}?")
        return root
    return None


def source_line(src: ManualSource) -> str:
    size = f"{src.size}, " if src.size else ""
    return f"{' or '.join(src.archives)} ({size}{src.url}; extracted: {src.layout})"


class Item(NamedTuple):
    """One example to write: its id and the files it is read from ({role: path})."""

    id: str
    files: Mapping[str, Path]


@dataclasses.dataclass(eq=False, kw_only=True)
class ManualSourceConfig(tfds.core.BuilderConfig):
    """A split protocol and its official split sizes."""

    split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)


class ManualSourceBuilder(SegmentationBuilder, skip_registration=True):
    """Base of builders whose sources are downloaded by hand (no download from here).

    Subclasses set ``SOURCES`` and implement ``_plan(roots, manual) -> {split: [Item]}`` and
    ``_load(item) -> example``; ``EXTRA_FEATURES`` adds features to the shared three and
    ``EXTRA_METADATA`` entries to the info's metadata. Examples are stored in the order of the split
    lists (tfds's shuffling by key is disabled). Extra constructor argument (besides
    ``manual_dir`` and tfds's own): ``verify_split_sizes`` (default True), check the split sizes
    against the config's official numbers before anything is written.
    """

    SOURCES: ClassVar[tuple[ManualSource, ...]] = ()
    EXTRA_FEATURES: ClassVar[Mapping[str, tfds.features.FeatureConnector]] = {}
    EXTRA_METADATA: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, *, verify_split_sizes: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.verify_split_sizes = verify_split_sizes
        self._original_state.update(verify_split_sizes=verify_split_sizes)
        self._manual_dir_in_effect: Path | None = None

    def _info(self) -> tfds.core.DatasetInfo:
        features = dict(segmentation_features().items())
        features.update(self.EXTRA_FEATURES)
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "segmentation"),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES), **self.EXTRA_METADATA),
            disable_shuffling=True,  # list order, so the reference's random.randint draws pick the same images
        )

    def expected_split_sizes(self) -> Mapping[str, int]:
        return dict(self.builder_config.split_sizes)

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                              download_config: tfds.download.DownloadConfig | None = None) -> None:
        manual = self._manual_dir_override or (download_config.manual_dir if download_config else None)
        self._manual_dir_in_effect = Path(manual or dl_manager.download_dir / "manual")
        super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        download_dir = Path(dl_manager.download_dir)
        manual = self._manual_dir_in_effect or download_dir / "manual"
        roots = self._resolve_sources(manual, download_dir)
        plan = self._plan(roots, manual)
        self._check_plan(plan)
        return {split: self._generate_examples(items) for split, items in plan.items()}

    def _generate_examples(self, items: Sequence[Item]) -> Iterator[tuple[str, dict[str, Any]]]:
        for item in items:
            yield item.id, self._load(item)

    def _plan(self, roots: Mapping[str, Path], manual: Path) -> dict[str, list[Item]]:
        raise NotImplementedError

    def _load(self, item: Item) -> dict[str, Any]:
        raise NotImplementedError

    def _resolve_sources(self, manual: Path, download_dir: Path) -> dict[str, Path]:
        """{source key: its root}; one DataError listing every missing source."""
        roots = {src.key: resolve_source(src, manual, download_dir) for src in self.SOURCES}
        missing = [src for src in self.SOURCES if roots[src.key] is None]
        if missing:
            raise DataError(f"{self.name}/{self.builder_config.name} needs sources that were not found: "
                            + "; ".join(source_line(s) for s in missing)
                            + f"; put them (archives or extracted trees) in {manual} or pass manual_dir=...")
        return {k: v for k, v in roots.items() if v is not None}

    def _check_plan(self, plan: Mapping[str, Sequence[Item]]) -> None:
        """Fails before anything is written: a missing file, or (verify_split_sizes) a wrong split size."""
        name = f"{self.name}/{self.builder_config.name}"
        for split, items in plan.items():
            for item in items:
                for path in item.files.values():
                    if not path.is_file():
                        raise DataError(f"{name}: {path} (split {split}, id {item.id}) does not exist")
        if not self.verify_split_sizes:
            return
        expected = self.expected_split_sizes()
        for split, items in plan.items():
            if len(items) != expected[split]:
                raise DataError(f"{name}: split {split!r} has {len(items)} examples, expected {expected[split]}; the "
                                "sources are not the official ones (pass verify_split_sizes=False to accept them)")


def list_file(name: str, *directories: Path) -> Path:
    """``<directory>/<name>`` for the first directory that has it; DataError naming the first if none."""
    for directory in directories:
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"list file {directories[0] / name} does not exist")


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; DataError naming it if unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e})") from e


def read_mat_field(path: Path, field: str) -> np.ndarray:
    """The 2-D integer array ``field`` of a MATLAB file; DataError naming the file otherwise."""
    try:
        value = scipy.io.loadmat(path)[field]
    except (KeyError, ValueError, TypeError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: cannot read field {field!r} ({type(e).__name__}: {e})") from e
    value = np.asarray(value)
    if value.ndim != 2 or not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
        raise DataError(f"{path}: field {field!r} is {value.dtype} {value.shape}, expected a 2-D label map")
    if np.issubdtype(value.dtype, np.floating):
        if not np.all(np.isfinite(value)) or np.any(value != np.round(value)):
            raise DataError(f"{path}: field {field!r} holds non-integer values")
        value = value.astype(np.int64)
    return value


def check_values(label: np.ndarray, allowed: np.ndarray, path: Path, what: str) -> None:
    """DataError naming ``path`` and the first value of ``label`` not in ``allowed``."""
    values = np.unique(label)
    bad = values[~np.isin(values, allowed)]
    if bad.size:
        raise DataError(f"{path}: {what} value {bad[0].item()} is outside {allowed.min()}..{allowed.max()}")


def check_same_size(path: Path, shape: tuple[int, ...], image: Path, image_shape: tuple[int, ...]) -> None:
    if tuple(shape[:2]) != tuple(image_shape[:2]):
        raise DataError(f"{path}: size {tuple(shape[:2])} differs from image {image} size {tuple(image_shape[:2])}")


# ------------------------------------------------------------------------------------------------
# PASCAL-Context.

def read_label_list(path: Path) -> list[str]:
    """Names of a PASCAL-Context list file (``"<n>: <name>"`` lines, n = 1, 2, ...), spaces removed."""
    names = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        number, sep, name = line.partition(":")
        if not sep or not number.strip().isdigit() or not name.strip():
            raise DataError(f"{path}:{line_no}: expected '<n>: <name>', got {line.strip()!r}")
        if int(number) != len(names) + 1:
            raise DataError(f"{path}:{line_no}: label number {int(number)} where {len(names) + 1} was expected")
        names.append(name.replace(" ", ""))
    if not names:
        raise DataError(f"{path}: no labels")
    return names


def context_label_ids(full: Sequence[str], task: Sequence[str], full_path: Path | str) -> tuple[int, ...]:
    """Full-list value of each task class, as pascalcontext_layers.py finds it (names without spaces,
    three task names under their full-list names)."""
    ids = []
    for name in task:
        name = FULL_LIST_NAMES.get(name, name)
        if name not in full:
            raise DataError(f"{full_path}: has no label {name!r} (a class of the 59-class task)")
        ids.append(full.index(name) + 1)
    return tuple(ids)


def label_lookup(ids: Sequence[int], num_full: int) -> np.ndarray:
    """(num_full + 1,) uint8: LabelMap value -> task label (0 = background)."""
    lut = np.zeros(num_full + 1, np.uint8)
    lut[np.asarray(ids)] = np.arange(1, len(ids) + 1, dtype=np.uint8)
    return lut


def _is_voc2010(d: Path) -> bool:
    return d.name == "VOC2010" and (d / "JPEGImages").is_dir() and (d / "ImageSets" / "Main").is_dir()


def _is_context(d: Path) -> bool:
    return (d / "trainval").is_dir() and ((d / "labels.txt").is_file()
                                          or next((d / "trainval").glob("*.mat"), None) is not None)


CONTEXT_SOURCES = (
    ManualSource(
        key="voc2010", archives=("VOCtrainval_03-May-2010.tar",),
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar", size="~1.3 GB",
        members=r"(?:^|/)VOC2010/(?:JPEGImages/[^/]+\.jpg|ImageSets/Main/(?:train|val)\.txt)$",
        is_root=_is_voc2010, layout="VOC2010/{JPEGImages,ImageSets/Main}"),
    ManualSource(
        key="context", archives=("trainval.tar.gz",),
        url="https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz", size="",
        members=r"(?:^|/)trainval/[^/]+\.mat$|(?:^|/)(?:59_)?labels\.txt$",
        is_root=_is_context, layout="trainval/<id>.mat (+ labels.txt)"),
)


def manual_download_instructions() -> str:
    return (
        "Put these (archives, or their extracted trees) in the manual directory (`manual_dir`, default\n"
        "<data_dir>/downloads/manual):\n"
        + "".join(f"  {source_line(s)}\n" for s in CONTEXT_SOURCES)
        + "  optional: labels.txt and 59_labels.txt (https://cs.stanford.edu/~roozbeh/pascal-context/), beside\n"
          "  trainval/ or in the manual directory; without them the built-in 59-class mapping is used.\n")


class PascalContext(ManualSourceBuilder):
    """PASCAL-Context, 59 classes + background; see the module docstring."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: context59 (the FCN reference's task)."}
    BUILDER_CONFIGS = [ManualSourceConfig(
        name="context59", split_sizes={TRAIN_SPLIT: 4998, EVAL_SPLIT: 5105},
        description="59 classes + background; VOC2010 Main train (4,998) / val (5,105).")]
    MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions()
    SOURCES = CONTEXT_SOURCES
    CLASS_NAMES = CONTEXT59_CLASSES
    EXTRA_METADATA = {"mean_bgr": list(MEAN_BGR)}
    DESCRIPTION = ("PASCAL-Context 59-class task (Mottaghi et al. 2014) on VOC2010: 0 = background (incl. the "
                   "other 400 classes), 1..59 the task classes; no void.")
    HOMEPAGE = "https://cs.stanford.edu/~roozbeh/pascal-context/"

    def _plan(self, roots: Mapping[str, Path], manual: Path) -> dict[str, list[Item]]:
        voc, context = roots["voc2010"], roots["context"]
        self._lookup = self._mapping(context, manual)
        main = voc / "ImageSets" / "Main"

        def item(image_id: str) -> Item:
            return Item(image_id, {"image": voc / "JPEGImages" / f"{image_id}.jpg",
                                   "label": context / "trainval" / f"{image_id}.mat"})

        return {TRAIN_SPLIT: [item(i) for i in read_ids(main / "train.txt")],
                EVAL_SPLIT: [item(i) for i in read_ids(main / "val.txt")]}

    @staticmethod
    def _mapping(context: Path, manual: Path) -> np.ndarray:
        """LabelMap value -> task label, from labels.txt / 59_labels.txt when present."""
        full_path = next((d / "labels.txt" for d in (context, manual) if (d / "labels.txt").is_file()), None)
        task_path = next((d / "59_labels.txt" for d in (context, manual) if (d / "59_labels.txt").is_file()), None)
        task = list(CONTEXT59_CLASSES[1:])
        if task_path is not None:
            task = read_label_list(task_path)
            if len(task) != 59:
                raise DataError(f"{task_path}: {len(task)} labels, expected 59")
        if full_path is None:
            if task != list(CONTEXT59_CLASSES[1:]):
                raise DataError(f"{task_path}: names differ from the 59-class task's and no labels.txt was found "
                                f"to map them (put labels.txt beside {context / 'trainval'})")
            log.info("no labels.txt beside %s: using the built-in 59-class mapping", context / "trainval")
            return label_lookup(CONTEXT_LABEL_IDS, NUM_FULL_LABELS)
        full = read_label_list(full_path)
        ids = context_label_ids(full, task, full_path)
        if ids != CONTEXT_LABEL_IDS or task != list(CONTEXT59_CLASSES[1:]):
            log.warning("%s / %s give a 59-class mapping that differs from the reference's: using the files'",
                        full_path, task_path or "built-in 59 names")
        return label_lookup(ids, len(full))

    def _load(self, item: Item) -> dict[str, Any]:
        image = read_rgb(item.files["image"])
        path = item.files["label"]
        full = read_mat_field(path, "LabelMap")
        check_values(full, np.arange(len(self._lookup)), path, "LabelMap")
        check_same_size(path, full.shape, item.files["image"], image.shape)
        return {"image": image, "segmentation": self._lookup[full], "file_name": item.id}
