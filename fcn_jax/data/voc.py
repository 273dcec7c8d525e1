"""tfds builder ``voc_segmentation``: PASCAL VOC semantic segmentation, with SBD for training.

tensorflow-datasets' own ``voc`` is detection only, so this builder reads the official archives.
Labels are class indices 0..20 (0 = background) with 255 = void (object boundaries and
"difficult" regions); palette PNGs are decoded to their indices, never to colours. Any other
label value stops the build with a :class:`DataError` naming the file and the value.

Configs (split sizes are checked against these numbers before anything is written):

- ``sbd_fcn`` (the FCN reference protocol; sources SBD + VOC2011): train = SBD ``train`` (8,498),
  labels from ``cls/*.mat`` ``GTcls.Segmentation``; validation = seg11valid (736).
- ``voc2012`` (source VOC2012): train = VOC2012 ``train`` (1,464), validation = ``val`` (1,449),
  labels from the ``SegmentationClass`` palette PNGs.
- ``voc2012_aug`` (sources VOC2012 + SBD): train = train_aug (10,582) = VOC2012 train + SBD train
  + SBD val - VOC2012 val, sorted by id, VOC2012's PNG label where one exists else SBD's;
  validation = VOC2012 ``val`` (1,449).

seg11valid is, by definition, VOC2011 segmentation ``val`` (1,111 ids) minus SBD ``train``.
The builder derives it from the two archives at build time and, with ``verify_split_sizes=True``
(the default), checks the result against the reference's list shipped as package data
(``seg11valid.txt``, 736 ids, from the FCN/Caffe reference's ``data/pascal/seg11valid.txt``).
``verify_split_sizes=False`` relaxes every check of split sizes and of that list (the sizes
then are whatever the list files in the archives give); it exists for partial or fake archives.

Sources: each archive is looked up, in order, as an extracted tree in the manual directory
(``VOCdevkit/VOC2012``, ``[TrainVal/]VOCdevkit/VOC2011``, ``benchmark_RELEASE/dataset``), as a
finished earlier extraction, as the archive file in the manual directory, as the archive file in
``<data_dir>/downloads``, and finally downloaded from its official address (``download=True``,
the default; the size and MD5 of a downloaded file are checked). Archives are extracted, only
the members needed, into ``<data_dir>/downloads/extracted/<archive name>``, marked complete only
once every member is written. When sources are
missing a single-line :class:`DataError` lists the files, their sizes and where to put them.
tfds writes the dataset into a temporary directory renamed only on success, so a failed build
leaves nothing that looks complete.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import logging
import json
import os
import re
import shutil
import tarfile
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io
import tensorflow_datasets as tfds
from PIL import Image

from fcn_jax.classes import VOC_CLASSES
from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT, DataError, SegmentationBuilder
from fcn_jax.preprocess import VOID

log = logging.getLogger(__name__)

NUM_CLASSES = len(VOC_CLASSES)

_VOC_MEMBERS = r"JPEGImages/[^/]+\.jpg|SegmentationClass/[^/]+\.png|ImageSets/Segmentation/[^/]+\.txt"
_SBD_MEMBERS = r"img/[^/]+\.jpg|cls/[^/]+\.mat|(?:train|val)\.txt"
_COMPLETE_MARKER = ".extraction_complete"


@dataclasses.dataclass(frozen=True)
class Source:
    """One official archive: where it comes from and which directory inside it is read.

    ``root`` may sit below one extra top-level directory in the archive (the VOC2011 tar holds
    ``TrainVal/VOCdevkit/VOC2011``). ``members`` is a regex, relative to ``root``, of the files
    extracted. ``size`` is approximate and only used in messages.
    """

    filename: str
    url: str
    size: str
    md5: str | None
    root: str
    members: str


SOURCES: dict[str, Source] = {
    "voc2012": Source(
        filename="VOCtrainval_11-May-2012.tar",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        size="~2.0 GB", md5="6cd6e144f989b92b3379bac3b3de84fd",
        root="VOCdevkit/VOC2012", members=_VOC_MEMBERS),
    "voc2011": Source(
        filename="VOCtrainval_25-May-2011.tar",
        url="http://host.robots.ox.ac.uk/pascal/VOC/voc2011/VOCtrainval_25-May-2011.tar",
        size="~1.7 GB", md5="6c3384ef61512963050cb5d687e5bf1e",
        root="VOCdevkit/VOC2011", members=_VOC_MEMBERS),
    "sbd": Source(
        filename="benchmark.tgz",
        url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        size="~1.4 GB", md5="82b4d87ceb2ed10f6038a1cba92111cb",
        root="benchmark_RELEASE/dataset", members=_SBD_MEMBERS),
}


@dataclasses.dataclass(eq=False, kw_only=True)
class VocSegmentationConfig(tfds.core.BuilderConfig):
    """A split protocol: the archives it reads and its official split sizes."""

    sources: tuple[str, ...] = ()
    split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)


CONFIGS = (
    VocSegmentationConfig(
        name="sbd_fcn", sources=("sbd", "voc2011"),
        split_sizes={TRAIN_SPLIT: 8498, EVAL_SPLIT: 736},
        description="FCN reference protocol: SBD train (8,498) / seg11valid (736)."),
    VocSegmentationConfig(
        name="voc2012", sources=("voc2012",),
        split_sizes={TRAIN_SPLIT: 1464, EVAL_SPLIT: 1449},
        description="VOC2012 segmentation train (1,464) / val (1,449)."),
    VocSegmentationConfig(
        name="voc2012_aug", sources=("voc2012", "sbd"),
        split_sizes={TRAIN_SPLIT: 10582, EVAL_SPLIT: 1449},
        description="VOC2012 train_aug (10,582: VOC2012 train + SBD train+val - VOC2012 val) / val (1,449)."),
)


def _source_line(src: Source) -> str:
    return f"{src.filename} ({src.size}, {src.url})"


def manual_download_instructions() -> str:
    """What to download for each config and where it goes."""
    per_config = "\n".join(
        f"  {c.name}: " + ", ".join(SOURCES[k].filename for k in c.sources) for c in CONFIGS)
    files = "\n".join(f"  {_source_line(s)}" for s in SOURCES.values())
    return (
        "Put these archives (or their extracted trees VOCdevkit/VOC2012, [TrainVal/]VOCdevkit/VOC2011,\n"
        "benchmark_RELEASE/dataset) in the manual directory (`manual_dir`, default\n"
        "<data_dir>/downloads/manual):\n" + files + "\nNeeded per config:\n" + per_config + "\n")


class Item(NamedTuple):
    """One example to write: its id and the files it is read from."""

    id: str
    image: Path
    label: Path


def read_ids(path: Path) -> list[str]:
    """Ids of a VOC/SBD list file (one id per line, first column), in file order."""
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def shipped_seg11valid() -> list[str]:
    """The FCN reference's seg11valid ids (736), shipped as package data."""
    text = importlib.resources.files("fcn_jax.data").joinpath("seg11valid.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_label_values(label: np.ndarray, path: os.PathLike | str) -> None:
    """Raises DataError naming ``path`` and the first value outside 0..20 and 255."""
    values = np.unique(label)
    bad = values[((values < 0) | (values >= NUM_CLASSES)) & (values != VOID)]
    if bad.size:
        raise DataError(f"{path}: label value {bad[0].item()} is outside 0..{NUM_CLASSES - 1} and {VOID} (void)")


def read_label(path: Path) -> np.ndarray:
    """(H, W) uint8 class indices from a palette/grayscale PNG or an SBD ``cls/*.mat`` file."""
    if path.suffix == ".mat":
        try:
            mat = scipy.io.loadmat(path, struct_as_record=False, squeeze_me=True)
            label = np.asarray(mat["GTcls"].Segmentation)
        except (KeyError, AttributeError, ValueError, OSError) as e:
            raise DataError(f"{path}: cannot read GTcls.Segmentation ({e})") from e
    else:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DataError(f"{path}: expected a palette (P) or grayscale (L) PNG of class indices, "
                                f"got mode {im.mode}")
            label = np.array(im)  # mode P: the palette indices themselves, not colours
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise DataError(f"{path}: expected a 2-D integer label map, got {label.dtype} {label.shape}")
    check_label_values(label, path)
    return label.astype(np.uint8)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_example(item: Item) -> dict[str, Any]:
    """The stored example for ``item``; image and label sizes must agree."""
    image, label = read_image(item.image), read_label(item.label)
    if image.shape[:2] != label.shape:
        raise DataError(f"{item.label}: label size {label.shape} differs from image {item.image} "
                        f"size {image.shape[:2]}")
    return {"image": image, "segmentation": label, "file_name": item.id}


# ------------------------------------------------------------------------------------------------
# Split protocols: {split: [Item]} from the source roots.

def _voc_item(voc: Path, image_id: str) -> Item:
    return Item(image_id, voc / "JPEGImages" / f"{image_id}.jpg", voc / "SegmentationClass" / f"{image_id}.png")


def _sbd_item(sbd: Path, image_id: str) -> Item:
    return Item(image_id, sbd / "img" / f"{image_id}.jpg", sbd / "cls" / f"{image_id}.mat")


def _voc_lists(voc: Path) -> tuple[list[str], list[str]]:
    lists = voc / "ImageSets" / "Segmentation"
    return read_ids(lists / "train.txt"), read_ids(lists / "val.txt")


def plan_sbd_fcn(roots: Mapping[str, Path]) -> dict[str, list[Item]]:
    sbd, voc11 = roots["sbd"], roots["voc2011"]
    sbd_train = read_ids(sbd / "train.txt")
    excluded = set(sbd_train)
    seg11valid = [i for i in _voc_lists(voc11)[1] if i not in excluded]
    return {TRAIN_SPLIT: [_sbd_item(sbd, i) for i in sbd_train],
            EVAL_SPLIT: [_voc_item(voc11, i) for i in seg11valid]}


def plan_voc2012(roots: Mapping[str, Path]) -> dict[str, list[Item]]:
    voc = roots["voc2012"]
    train, val = _voc_lists(voc)
    return {TRAIN_SPLIT: [_voc_item(voc, i) for i in train], EVAL_SPLIT: [_voc_item(voc, i) for i in val]}


def plan_voc2012_aug(roots: Mapping[str, Path]) -> dict[str, list[Item]]:
    voc, sbd = roots["voc2012"], roots["sbd"]
    voc_train, voc_val = _voc_lists(voc)
    train_aug = sorted(set(voc_train).union(read_ids(sbd / "train.txt"), read_ids(sbd / "val.txt")) - set(voc_val))

    def item(image_id: str) -> Item:
        if (voc / "SegmentationClass" / f"{image_id}.png").is_file():
            return _voc_item(voc, image_id)
        jpeg = voc / "JPEGImages" / f"{image_id}.jpg"
        return Item(image_id, jpeg if jpeg.is_file() else sbd / "img" / f"{image_id}.jpg",
                    sbd / "cls" / f"{image_id}.mat")

    return {TRAIN_SPLIT: [item(i) for i in train_aug], EVAL_SPLIT: [_voc_item(voc, i) for i in voc_val]}


PLANS = {"sbd_fcn": plan_sbd_fcn, "voc2012": plan_voc2012, "voc2012_aug": plan_voc2012_aug}


# ------------------------------------------------------------------------------------------------
# Sources: manual directory, download, extraction.

def find_extracted_root(directory: Path, src: Source) -> Path | None:
    """``directory/<root>`` or ``directory/<one level>/<root>`` if it exists."""
    if not directory.is_dir():
        return None
    candidates = [directory / src.root] + [d / src.root for d in sorted(directory.iterdir()) if d.is_dir()]
    return next((c for c in candidates if c.is_dir()), None)


def extraction_matches(dest: Path, archive: Path | None) -> bool:
    """Whether ``dest`` holds a complete extraction of ``archive`` as it is now (same size and modification
    time; any complete extraction when ``archive`` is None). An archive replaced since is extracted again."""
    marker = dest / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    if archive is None:
        return True
    try:
        record = json.loads(marker.read_text())
        stat = archive.stat()
        return record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns
    except (ValueError, KeyError, TypeError, OSError):  # a marker of an earlier version: redo
        return False


def extract_archive(archive: Path, src: Source, dest: Path) -> Path:
    """Extracts the members ``src`` needs into ``dest/<root>``, in one streaming pass.

    Works for plain and gzip tars. ``dest`` gets a completion marker only once everything is
    written; a partial extraction is discarded and redone. Returns ``dest/<root>``.
    """
    if extraction_matches(dest, archive):
        return dest / src.root
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    pattern = re.compile(r"(?:^|/)" + re.escape(src.root) + r"/(" + src.members + r")$")
    count = 0
    log.info("extracting %s into %s", archive, dest)
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                match = pattern.search(member.name) if member.isfile() else None
                if match is None:
                    continue
                target = partial / src.root / match.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                count += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot read archive {archive}: {e}") from e
    if count == 0:
        raise DataError(f"archive {archive} contains no files under {src.root}/; is it {src.filename}?")
    stat = archive.stat()
    (partial / _COMPLETE_MARKER).write_text(json.dumps({"archive": str(archive.resolve()), "size": stat.st_size,
                                                        "mtime_ns": stat.st_mtime_ns, "files": count}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest / src.root


def download_archive(src: Source, directory: Path, *, timeout: float = 60.0) -> Path:
    """Downloads ``src.url`` to ``directory/<filename>`` (via a ``.part`` file), checking the MD5.

    Raises OSError (incl. urllib's URLError) when the address cannot be reached, DataError when
    the downloaded file is truncated or has the wrong MD5 (the bad file is removed).
    """
    directory.mkdir(parents=True, exist_ok=True)
    target, part = directory / src.filename, directory / (src.filename + ".part")
    md5 = hashlib.md5()
    log.info("downloading %s (%s) to %s", src.url, src.size, target)
    with urllib.request.urlopen(src.url, timeout=timeout) as response, open(part, "wb") as out:
        expected = response.headers.get("Content-Length")
        written = 0
        while chunk := response.read(1 << 22):
            out.write(chunk)
            md5.update(chunk)
            written += len(chunk)
    if expected is not None and int(expected) != written:
        part.unlink()
        raise DataError(f"download of {src.url} is truncated: {written} of {expected} bytes")
    if src.md5 is not None and md5.hexdigest() != src.md5:
        part.unlink()
        raise DataError(f"download of {src.url} has MD5 {md5.hexdigest()}, expected {src.md5} (file removed)")
    part.rename(target)
    return target


class VocSegmentation(SegmentationBuilder):
    """PASCAL VOC / SBD semantic segmentation; see the module docstring.

    Extra constructor arguments (besides ``manual_dir`` and tfds's own):

    - ``verify_split_sizes`` (default True): check split sizes against the config's official
      numbers, and seg11valid against the shipped list, before anything is written.
    - ``download`` (default True): try the official addresses for archives not found locally.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: sbd_fcn, voc2012, voc2012_aug."}
    BUILDER_CONFIGS = list(CONFIGS)
    MANUAL_DOWNLOAD_INSTRUCTIONS = manual_download_instructions()
    CLASS_NAMES = VOC_CLASSES
    DESCRIPTION = "PASCAL VOC semantic segmentation (21 classes, 255 = void), with SBD for training."
    HOMEPAGE = "http://host.robots.ox.ac.uk/pascal/VOC/"

    def __init__(self, *, verify_split_sizes: bool = True, download: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        self.verify_split_sizes = verify_split_sizes
        self.allow_download = download
        self._original_state.update(verify_split_sizes=verify_split_sizes, download=download)
        self._manual_dir_in_effect: Path | None = None

    def expected_split_sizes(self) -> Mapping[str, int]:
        return dict(self.builder_config.split_sizes)

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                              download_config: tfds.download.DownloadConfig | None = None) -> None:
        manual = self._manual_dir_override or (download_config.manual_dir if download_config else None)
        self._manual_dir_in_effect = Path(manual or dl_manager.download_dir / "manual")
        super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        roots = self._resolve_sources(Path(dl_manager.download_dir))
        plan = PLANS[self.builder_config.name](roots)
        self._check_plan(plan)
        return {split: self._generate_examples(items) for split, items in plan.items()}

    def _generate_examples(self, items: Sequence[Item]) -> Iterator[tuple[str, dict[str, Any]]]:
        for item in items:
            yield item.id, load_example(item)

    def _check_plan(self, plan: Mapping[str, Sequence[Item]]) -> None:
        """Fails before anything is written: missing files, wrong split sizes, wrong seg11valid."""
        name = f"{self.name}/{self.builder_config.name}"
        for split, items in plan.items():
            for item in items:
                for path in (item.image, item.label):
                    if not path.is_file():
                        raise DataError(f"{name}: {path} (split {split}, id {item.id}) does not exist")
        if not self.verify_split_sizes:
            return
        expected = self.expected_split_sizes()
        for split, items in plan.items():
            if len(items) != expected[split]:
                raise DataError(
                    f"{name}: split {split!r} has {len(items)} examples, expected {expected[split]}; the sources "
                    "are not the official archives (pass verify_split_sizes=False to accept them)")
        if self.builder_config.name == "sbd_fcn":
            derived, shipped = sorted(i.id for i in plan[EVAL_SPLIT]), sorted(shipped_seg11valid())
            if derived != shipped:
                diff = sorted(set(derived) ^ set(shipped))
                raise DataError(f"{name}: VOC2011 val minus SBD train differs from the shipped seg11valid list "
                                f"in {len(diff)} ids (first {diff[:3]})")

    def _resolve_sources(self, download_dir: Path) -> dict[str, Path]:
        """{source key: directory of its extracted root}; one DataError listing all missing archives."""
        manual = self._manual_dir_in_effect or download_dir / "manual"
        roots: dict[str, Path] = {}
        missing: list[Source] = []
        failures: list[str] = []
        for key in self.builder_config.sources:
            src = SOURCES[key]
            extracted = download_dir / "extracted" / src.filename
            root = find_extracted_root(manual, src)
            archive = next((p for p in (manual / src.filename, download_dir / src.filename) if p.is_file()), None)
            if root is None and extraction_matches(extracted, archive):  # stale if the archive was replaced
                root = extracted / src.root
            if root is None:
                if archive is None and self.allow_download:
                    try:
                        archive = download_archive(src, download_dir)
                    except OSError as e:  # unreachable address, refused connection, HTTP error
                        failures.append(f"{src.url}: {e}")
                if archive is not None:
                    root = extract_archive(archive, src, extracted)
            if root is None:
                missing.append(src)
            else:
                roots[key] = root
        if missing:
            tried = f"; download failed: {' | '.join(failures)}" if failures else ""
            raise DataError(
                f"{self.name}/{self.builder_config.name} needs source archives that were not found: "
                + ", ".join(_source_line(s) for s in missing)
                + f"; put them (or their extracted trees) in {manual} or pass manual_dir=...{tried}")
        return roots
