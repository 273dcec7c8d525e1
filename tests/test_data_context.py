"""The ``pascal_context`` builder on a fake VOC2010 + PASCAL-Context release in the real formats.

VOC2010 JPEGs with ``ImageSets/Main`` lists; ``trainval/<id>.mat`` files holding a uint16 ``LabelMap``
(saved with scipy.io.savemat); ``labels.txt`` / ``59_labels.txt`` as ``"<n>: <name>"`` lines. Expected
labels are re-derived here with the reference's ``pascalcontext_layers.py`` algorithm, written out
independently of the builder.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import data
from fcn_jax.data import pascal_context

TRAIN = ["2008_000002", "2008_000003", "2008_000007", "2009_000001"]
VAL = ["2008_000008", "2010_000002", "2008_000010"]  # not sorted: list order must be kept

# data/pascal-context/classes-59.txt of the reference, classes 1..59 (= 59_labels.txt).
TASK59 = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor", "bag", "bed", "bench",
    "book", "building", "cabinet", "ceiling", "clothes", "computer", "cup", "door", "fence", "floor", "flower",
    "food", "grass", "ground", "keyboard", "light", "mountain", "mouse", "curtain", "platform", "sign", "plate",
    "road", "rock", "shelves", "sidewalk", "sky", "snow", "bedcloth", "track", "tree", "truck", "wall", "water",
    "window", "wood",
)
# The full list's values of background + the 59 classes, sorted, as mmsegmentation's PASCAL-Context
# converter lists them: an independent statement of the same mapping.
MMSEG_IDS = sorted([0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162,
                    420, 454, 295, 296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458,
                    34, 207, 80, 355, 85, 347, 220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115])
# A few lines of the real labels.txt (classes-400.txt): task classes and others.
REAL_TASK = {"aeroplane": 2, "diningtable": 397, "bedcloth": 19, "clothes": 80, "person": 284, "sky": 360,
             "tvmonitor": 427, "wood": 458}
REAL_OTHER = [1, 3, 431, 459]  # accordion, air conditioner, unknown, wool


# ------------------------------------------------------------------------------------------------
# The reference's mapping, from pascalcontext_layers.py.

def parse_list(path: Path) -> list[str]:
    return [line.split(":", 1)[1].replace(" ", "") for line in path.read_text().splitlines() if line.strip()]


def reference_label(label_400: np.ndarray, labels_txt: Path, labels59_txt: Path) -> np.ndarray:
    labels_400 = parse_list(labels_txt)
    labels_59 = parse_list(labels59_txt)
    for main_label, task_label in zip(("table", "bedclothes", "cloth"), ("diningtable", "bedcloth", "clothes")):
        labels_59[labels_59.index(task_label)] = main_label
    label = np.zeros_like(label_400, dtype=np.uint8)
    for idx, name in enumerate(labels_59):
        label[label_400 == labels_400.index(name) + 1] = idx + 1
    return label


# ------------------------------------------------------------------------------------------------
# Fake sources.

def fake_full_list(seed: int = 0) -> list[str]:
    """459 names: the 59 task classes (full-list spellings, some with spaces) at shuffled positions."""
    rng = np.random.default_rng(seed)
    names = [f"thing {i}" for i in range(459)]
    spelled = {"diningtable": "table", "bedcloth": "bedclothes", "clothes": "cloth", "tvmonitor": "tv monitor",
               "pottedplant": "potted plant"}
    for position, name in zip(rng.permutation(459)[:59], TASK59):
        names[position] = spelled.get(name, name)
    return names


def write_lists(path: Path, names: list[str] | tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))


def fake_label_map(image_id: str, values: list[int]) -> np.ndarray:
    rng = np.random.default_rng(list(image_id.encode()))
    h, w = (int(v) for v in rng.integers(10, 20, 2))
    return rng.choice(np.asarray(values, np.uint16), size=(h, w))


def write_voc2010(root: Path, train: list[str], val: list[str], shapes: dict[str, tuple[int, int]]) -> None:
    base = root / "VOC2010"
    for image_id in train + val:
        (base / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full(shapes[image_id] + (3,), 90, np.uint8)).save(base / "JPEGImages" / f"{image_id}.jpg")
    main = base / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    (main / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (main / "val.txt").write_text("".join(f"{i}\n" for i in val))
    (main / "aeroplane_train.txt").write_text("".join(f"{i} -1\n" for i in train))  # decoy


def write_context(root: Path, maps: dict[str, np.ndarray]) -> None:
    (root / "trainval").mkdir(parents=True, exist_ok=True)
    for image_id, label_map in maps.items():
        scipy.io.savemat(root / "trainval" / f"{image_id}.mat", {"LabelMap": label_map})


def make_tree(root: Path, values: list[int], full: list[str] | None, train=TRAIN, val=VAL) -> dict[str, np.ndarray]:
    """Reference layout: root/pascal/VOC2010 and root/pascal-context/{trainval,labels.txt,59_labels.txt}."""
    maps = {i: fake_label_map(i, values) for i in train + val}
    write_voc2010(root / "pascal", train, val, {i: m.shape for i, m in maps.items()})
    write_context(root / "pascal-context", maps)
    if full is not None:
        write_lists(root / "pascal-context" / "labels.txt", full)
        write_lists(root / "pascal-context" / "59_labels.txt", TASK59)
    return maps


def read_split(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def with_lists(tmp_path_factory):
    """Extracted trees with (shuffled) labels.txt + 59_labels.txt, built."""
    work = tmp_path_factory.mktemp("context_lists")
    full = fake_full_list()
    task_ids = [i + 1 for i, n in enumerate(full) if not n.startswith("thing")]
    other_ids = [i + 1 for i, n in enumerate(full) if n.startswith("thing")][:3]
    values = [0, *task_ids, *other_ids]
    maps = make_tree(work / "manual", values, full)
    builder = data.prepare("pascal_context", data_dir=work / "tfds", manual_dir=work / "manual",
                           verify_split_sizes=False)
    return work, builder, maps


@pytest.fixture(scope="module")
def from_archives(tmp_path_factory):
    """The two archives (no labels.txt inside): the built-in mapping, checked against real ids."""
    work = tmp_path_factory.mktemp("context_archives")
    values = [0] + list(REAL_TASK.values()) + REAL_OTHER
    maps = make_tree(work / "trees", values, None)
    manual = work / "manual"
    manual.mkdir()
    with tarfile.open(manual / "VOCtrainval_03-May-2010.tar", "w") as tar:
        tar.add(work / "trees" / "pascal" / "VOC2010", arcname="VOCdevkit/VOC2010")
    with tarfile.open(manual / "trainval.tar.gz", "w:gz") as tar:
        tar.add(work / "trees" / "pascal-context" / "trainval", arcname="trainval")
    builder = data.prepare("pascal_context", data_dir=work / "tfds", manual_dir=manual, verify_split_sizes=False)
    return work, builder, maps


# ------------------------------------------------------------------------------------------------

def test_labels_follow_the_reference_mapping_from_the_list_files(with_lists):
    work, builder, maps = with_lists
    lists = work / "manual" / "pascal-context"
    for split, ids in (("train", TRAIN), ("validation", VAL)):
        examples = read_split(builder, split)
        assert [e["file_name"].decode() for e in examples] == ids  # list order kept
        for e in examples:
            image_id = e["file_name"].decode()
            expected = reference_label(maps[image_id], lists / "labels.txt", lists / "59_labels.txt")
            assert e["segmentation"].dtype == np.uint8 and e["image"].dtype == np.uint8
            np.testing.assert_array_equal(e["segmentation"], expected)
            assert e["image"].shape == expected.shape + (3,)
    every = np.concatenate([e["segmentation"].ravel() for e in read_split(builder, "train")])
    assert every.max() <= 59 and (every == 0).any() and len(np.unique(every)) > 5 and not (every == 255).any()
    assert builder.info.metadata["class_names"] == ["background", *TASK59]
    assert builder.info.metadata["mean_bgr"] == [104.007, 116.669, 122.679]


def test_builtin_mapping_from_archives_matches_real_label_ids(from_archives):
    work, builder, maps = from_archives
    lut = {v: TASK59.index(name) + 1 for name, v in REAL_TASK.items()}  # others (and 0) -> background
    for split, ids in (("train", TRAIN), ("validation", VAL)):
        examples = read_split(builder, split)
        assert [e["file_name"].decode() for e in examples] == ids
        for e in examples:
            raw = maps[e["file_name"].decode()]
            expected = np.vectorize(lambda v: lut.get(int(v), 0))(raw).astype(np.uint8)
            np.testing.assert_array_equal(e["segmentation"], expected)
    extracted = work / "tfds" / "downloads" / "extracted"
    assert sorted(p.name for p in extracted.iterdir()) == ["VOCtrainval_03-May-2010.tar", "trainval.tar.gz"]
    assert not list(extracted.rglob("aeroplane_train.txt"))  # only the needed members
    # the built-in table, against the independent statements of it
    assert sorted([0, *pascal_context.CONTEXT_LABEL_IDS]) == MMSEG_IDS
    assert pascal_context.CONTEXT59_CLASSES == ("background", *TASK59)


def test_split_sizes_meta_and_pipeline(with_lists):
    work, builder, _ = with_lists
    meta = data.dataset_meta("pascal_context", data_dir=work / "tfds")
    assert meta.name == "pascal_context/context59" and meta.num_classes == 60
    assert dict(meta.splits) == {"train": len(TRAIN), "validation": len(VAL)}
    assert dict(data.dataset_meta("pascal_context", data_dir=work / "unbuilt").splits) == {
        "train": 4998, "validation": 5105}
    from fcn_jax.data.pipeline import TrainInput, eval_batches, train_iterator

    source = builder.as_data_source(split="validation")
    batches = list(eval_batches(source, batch_size=1, convention="caffe", num_threads=1))
    assert sorted(b.names[0] for b in batches) == sorted(VAL)
    for b in batches:
        assert b.image.shape[-1] == 3 and b.label.shape == b.image.shape[:3]
    with train_iterator(builder.as_data_source(split="train"), TrainInput(mode="reference", batch_size=1),
                        num_threads=1) as it:
        batch = next(it)
    assert batch["label"].ndim == 3 and int(batch["label"].max()) <= 59


def test_official_split_sizes_are_checked_before_writing(tmp_path, with_lists):
    work, _, _ = with_lists
    with pytest.raises(data.DataError, match=r"split 'train' has 4 examples, expected 4998"):
        data.prepare("pascal_context", data_dir=tmp_path, manual_dir=work / "manual")
    assert not any(tmp_path.rglob("dataset_info.json"))


def test_missing_sources_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.prepare("pascal_context", data_dir=tmp_path / "a", manual_dir=tmp_path / "empty")
    message = str(info.value)
    assert "\n" not in message and "VOCtrainval_03-May-2010.tar" in message and "trainval.tar.gz" in message
    make_tree(tmp_path / "m", [0, 2], None, train=["2008_000002"], val=["2008_000008"])
    (tmp_path / "m" / "pascal-context" / "trainval" / "2008_000008.mat").unlink()
    with pytest.raises(data.DataError, match=r"2008_000008\.mat \(split validation, id 2008_000008\) does not exist"):
        data.prepare("pascal_context", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)


def test_bad_label_value_stops_the_build(tmp_path):
    maps = make_tree(tmp_path / "m", [0, 2], None, train=["2008_000002"], val=["2008_000008"])
    bad = maps["2008_000002"].copy()
    bad[0, 0] = 460
    scipy.io.savemat(tmp_path / "m" / "pascal-context" / "trainval" / "2008_000002.mat", {"LabelMap": bad})
    with pytest.raises(data.DataError, match=r"2008_000002\.mat: LabelMap value 460 is outside 0\.\.459") as info:
        data.prepare("pascal_context", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)
    assert "\n" not in str(info.value)
    assert not any((tmp_path / "b").rglob("dataset_info.json"))
