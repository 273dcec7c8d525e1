"""The ``voc_segmentation`` builder on fake VOC2012 / VOC2011 / SBD archives in the real formats.

The archives hold JPEG images, palette PNG labels with void (255) borders, SBD ``cls/*.mat``
files with a ``GTcls`` MATLAB struct, and the official list files, under the official layouts
(``VOCdevkit/VOC2012``, ``TrainVal/VOCdevkit/VOC2011``, ``benchmark_RELEASE/dataset``), plus
members the builder must skip (annotations, instance maps).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import data
from fcn_jax.data import voc

# Ids of the fake release. Overlaps mirror the real ones: SBD train contains some VOC2011 val ids
# (seg11valid excludes them), and one VOC2012 val id (train_aug excludes it).
VOC12_TRAIN = ["2007_000032", "2007_000039", "2008_000002", "2008_000008"]
VOC12_VAL = ["2007_000033", "2007_000042", "2008_000009"]
VOC11_TRAIN = ["2007_000032", "2008_000002"]
VOC11_VAL = ["2007_000033", "2007_000042", "2008_000009", "2008_000074"]
SBD_TRAIN = ["2007_000039", "2008_000009", "2008_000074", "2008_000100", "2008_000101"]
SBD_VAL = ["2007_000042", "2008_000102", "2008_000103"]


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map (256 x 3 uint8)."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def fake_label(image_id: str, source: str) -> np.ndarray:
    """Deterministic (H, W) label: rectangles of classes 1..20 with a 2-px void border (VOC only)."""
    rng = np.random.default_rng(list(image_id.encode()) + list(source.encode()))
    h, w = (int(v) for v in rng.integers(20, 40, 2))
    label = np.zeros((h, w), np.uint8)
    for _ in range(2):
        y0, x0 = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
        label[y0:y0 + 8, x0:x0 + 8] = rng.integers(1, 21)
    if source == "voc":  # VOC draws void along object boundaries; SBD has none
        edge = np.zeros_like(label, bool)
        edge[1:] |= label[1:] != label[:-1]
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        label[edge] = 255
    return label


def write_jpeg(path: Path, shape: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape + (3,), 128, np.uint8)).save(path, quality=95)


def write_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(label, mode="P")
    image.putpalette(voc_palette().ravel().tolist())
    image.save(path)


def write_voc_tree(root: Path, year: str, train: list[str], val: list[str], bad: dict[str, int] | None = None) -> None:
    """``root/VOCdevkit/VOC<year>`` with JPEGImages, SegmentationClass, ImageSets and decoys."""
    base = root / "VOCdevkit" / f"VOC{year}"
    for image_id in train + val:
        label = fake_label(image_id, "voc")
        if bad and image_id in bad:
            label[0, 0] = bad[image_id]
        write_jpeg(base / "JPEGImages" / f"{image_id}.jpg", label.shape)
        write_palette_png(base / "SegmentationClass" / f"{image_id}.png", label)
        write_palette_png(base / "SegmentationObject" / f"{image_id}.png", (label > 0).astype(np.uint8))
        (base / "Annotations").mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text("<annotation/>")
    write_jpeg(base / "JPEGImages" / "2009_000001.jpg", (10, 10))  # an image without segmentation
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for name, ids in (("train", train), ("val", val), ("trainval", train + val)):
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))


def write_sbd_tree(root: Path) -> None:
    """``root/benchmark_RELEASE/dataset`` with img, cls (GTcls structs), inst decoys and lists."""
    base = root / "benchmark_RELEASE" / "dataset"
    for name in ("img", "cls", "inst"):
        (base / name).mkdir(parents=True, exist_ok=True)
    for image_id in SBD_TRAIN + SBD_VAL:
        label = fake_label(image_id, "sbd")
        write_jpeg(base / "img" / f"{image_id}.jpg", label.shape)
        boundaries = np.empty((20,), dtype=object)
        for k in range(20):
            boundaries[k] = np.zeros((2, 2), np.uint8)
        gtcls = {"Boundaries": boundaries, "Segmentation": label,
                 "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8)}
        scipy.io.savemat(base / "cls" / f"{image_id}.mat", {"GTcls": gtcls})
        scipy.io.savemat(base / "inst" / f"{image_id}.mat", {"GTinst": {"Segmentation": label}})
    (base / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (base / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))


def make_tar(tree: Path, archive: Path, compress: bool) -> Path:
    with tarfile.open(archive, "w:gz" if compress else "w") as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    return archive


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    """The three official archive names, faked, in one manual directory (plus their trees)."""
    work = tmp_path_factory.mktemp("fake_sources")
    write_voc_tree(work / "voc2012", "2012", VOC12_TRAIN, VOC12_VAL)
    write_voc_tree(work / "voc2011" / "TrainVal", "2011", VOC11_TRAIN, VOC11_VAL)
    write_sbd_tree(work / "sbd")
    manual = work / "manual"
    manual.mkdir()
    make_tar(work / "voc2012", manual / voc.SOURCES["voc2012"].filename, compress=False)
    make_tar(work / "voc2011", manual / voc.SOURCES["voc2011"].filename, compress=False)
    make_tar(work / "sbd", manual / voc.SOURCES["sbd"].filename, compress=True)
    return {"manual": manual, "voc2012_tree": work / "voc2012", "work": work}


def build(config: str, data_dir: Path, manual_dir: Path, **kwargs):
    kwargs.setdefault("verify_split_sizes", False)
    kwargs.setdefault("download", False)
    return data.prepare(f"voc_segmentation/{config}", data_dir=data_dir, manual_dir=manual_dir, **kwargs)


def read_split(builder, split: str) -> dict[str, dict]:
    source = builder.as_data_source(split=split)
    return {source[i]["file_name"].decode(): source[i] for i in range(len(source))}


def looks_complete(data_dir: Path) -> bool:
    return any(data_dir.rglob("dataset_info.json"))


# ------------------------------------------------------------------------------------------------

def test_voc2012_splits_labels_and_void(tmp_path, archives):
    builder = build("voc2012", tmp_path, archives["manual"])
    train, val = read_split(builder, "train"), read_split(builder, "validation")
    assert sorted(train) == sorted(VOC12_TRAIN) and sorted(val) == sorted(VOC12_VAL)
    for image_id, example in {**train, **val}.items():
        expected = fake_label(image_id, "voc")
        assert example["segmentation"].dtype == np.uint8
        np.testing.assert_array_equal(example["segmentation"], expected)  # indices, not palette colours
        assert (example["segmentation"] == 255).any()  # the void border survives
        assert example["image"].shape == expected.shape + (3,) and example["image"].dtype == np.uint8
        assert abs(int(example["image"].mean()) - 128) <= 2
    assert builder.info.metadata["class_names"] == list(voc.VOC_CLASSES)
    meta = data.dataset_meta("voc_segmentation/voc2012", data_dir=tmp_path)
    assert meta.num_classes == 21 and dict(meta.splits) == {"train": 4, "validation": 3}
    # only the needed members were extracted
    extracted = tmp_path / "downloads" / "extracted" / voc.SOURCES["voc2012"].filename / "VOCdevkit" / "VOC2012"
    assert sorted(p.name for p in extracted.iterdir()) == ["ImageSets", "JPEGImages", "SegmentationClass"]


def test_sbd_fcn_trains_on_sbd_and_validates_on_derived_seg11valid(tmp_path, archives):
    builder = build("sbd_fcn", tmp_path, archives["manual"])
    train, val = read_split(builder, "train"), read_split(builder, "validation")
    assert sorted(train) == sorted(SBD_TRAIN)
    assert sorted(val) == sorted(set(VOC11_VAL) - set(SBD_TRAIN)) == ["2007_000033", "2007_000042"]
    for image_id, example in train.items():
        np.testing.assert_array_equal(example["segmentation"], fake_label(image_id, "sbd"))  # from GTcls
    for image_id, example in val.items():
        np.testing.assert_array_equal(example["segmentation"], fake_label(image_id, "voc"))


def test_voc2012_aug_merges_and_prefers_voc_labels(tmp_path, archives):
    builder = build("voc2012_aug", tmp_path, archives["manual"])
    train = read_split(builder, "train")
    expected_ids = sorted((set(VOC12_TRAIN) | set(SBD_TRAIN) | set(SBD_VAL)) - set(VOC12_VAL))
    assert sorted(train) == expected_ids and "2008_000009" not in train  # VOC2012 val excluded
    # 2007_000039 is in VOC2012 train and SBD train: the VOC label wins
    np.testing.assert_array_equal(train["2007_000039"]["segmentation"], fake_label("2007_000039", "voc"))
    np.testing.assert_array_equal(train["2008_000100"]["segmentation"], fake_label("2008_000100", "sbd"))
    assert sorted(read_split(builder, "validation")) == sorted(VOC12_VAL)


def test_official_split_sizes_are_checked_before_writing(tmp_path, archives):
    with pytest.raises(data.DataError, match=r"split 'train' has 5 examples, expected 8498"):
        build("sbd_fcn", tmp_path, archives["manual"], verify_split_sizes=True)
    assert not looks_complete(tmp_path)
    assert len(voc.shipped_seg11valid()) == 736 == voc.CONFIGS[0].split_sizes["validation"]


def test_bad_label_value_stops_the_build_naming_file_and_value(tmp_path, archives):
    root = tmp_path / "bad_tree"
    write_voc_tree(root, "2012", VOC12_TRAIN, VOC12_VAL, bad={"2008_000008": 42})
    manual = tmp_path / "manual"
    manual.mkdir()
    make_tar(root, manual / voc.SOURCES["voc2012"].filename, compress=False)
    data_dir = tmp_path / "tfds"
    with pytest.raises(data.DataError, match=r"2008_000008\.png: label value 42 is outside 0\.\.20 and 255"):
        build("voc2012", data_dir, manual)
    assert not looks_complete(data_dir)
    assert not data.get_builder("voc_segmentation/voc2012", data_dir=data_dir).is_prepared()


def test_missing_sources_give_one_line_listing_files_sizes_and_place(tmp_path):
    manual = tmp_path / "empty_manual"
    with pytest.raises(data.DataError) as info:
        build("sbd_fcn", tmp_path / "tfds", manual)
    message = str(info.value)
    assert "\n" not in message
    for key in ("sbd", "voc2011"):
        src = voc.SOURCES[key]
        assert src.filename in message and src.size in message and src.url in message
    assert voc.SOURCES["voc2012"].filename not in message
    assert str(manual) in message
    assert not looks_complete(tmp_path / "tfds")
    with pytest.raises(data.DataError, match="not found"):
        data.load_split("voc_segmentation/voc2012", "train", data_dir=tmp_path / "tfds", manual_dir=manual,
                        download=False)
    assert "benchmark.tgz" in voc.VocSegmentation.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_extracted_tree_in_manual_dir_is_used_as_is(tmp_path, archives):
    manual = tmp_path / "manual"
    shutil.copytree(archives["voc2012_tree"], manual)
    builder = build("voc2012", tmp_path / "tfds", manual)
    assert sorted(read_split(builder, "validation")) == sorted(VOC12_VAL)
    assert not (tmp_path / "tfds" / "downloads" / "extracted" / voc.SOURCES["voc2012"].filename).exists()


def test_download_from_the_official_address_with_md5_check(tmp_path, archives, monkeypatch):
    archive = archives["manual"] / voc.SOURCES["voc2012"].filename
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    wrong = dataclasses.replace(voc.SOURCES["voc2012"], url=archive.as_uri(), md5="0" * 32)
    monkeypatch.setitem(voc.SOURCES, "voc2012", wrong)
    data_dir = tmp_path / "tfds"
    with pytest.raises(data.DataError, match="MD5"):
        build("voc2012", data_dir, tmp_path / "no_manual", download=True)
    assert not (data_dir / "downloads" / archive.name).exists()
    monkeypatch.setitem(voc.SOURCES, "voc2012", dataclasses.replace(wrong, md5=md5))
    builder = build("voc2012", data_dir, tmp_path / "no_manual", download=True)
    assert (data_dir / "downloads" / archive.name).is_file()
    assert sorted(read_split(builder, "train")) == sorted(VOC12_TRAIN)


def test_a_replaced_archive_is_extracted_again(tmp_path, archives):
    """An archive missing a file fails the build; after the user replaces it with a complete one the build
    must use the new archive (earlier code kept reusing the stale extraction with the same error)."""
    broken_tree = tmp_path / "broken"
    shutil.copytree(archives["voc2012_tree"], broken_tree)
    missing = VOC12_VAL[0]
    (broken_tree / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{missing}.jpg").unlink()
    manual = tmp_path / "manual"
    manual.mkdir()
    archive = manual / voc.SOURCES["voc2012"].filename
    make_tar(broken_tree, archive, compress=False)
    data_dir = tmp_path / "tfds"
    with pytest.raises(Exception, match=missing):
        build("voc2012", data_dir, manual)
    make_tar(archives["voc2012_tree"], archive, compress=False)  # the user replaces the archive
    os.utime(archive, ns=(archive.stat().st_atime_ns, archive.stat().st_mtime_ns + 1_000_000_000))
    builder = build("voc2012", data_dir, manual)
    assert sorted(read_split(builder, "validation")) == sorted(VOC12_VAL)
