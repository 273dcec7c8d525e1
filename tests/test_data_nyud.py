"""The ``nyud`` builder on a fake copy of the reference's prepared NYUDv2 in the real formats.

``data/images`` RGB PNGs, ``data/hha`` 3 x 8-bit PNGs, ``data/depth`` 16-bit PNGs (millimetres),
``segmentation/img_<id>.mat`` files (field ``segmentation``, saved with scipy.io.savemat) and the
``train.txt`` / ``val.txt`` / ``test.txt`` id lists, packed as ``nyud.tar.gz``. Expected labels and
depth inputs are re-derived with ``nyud_layers.py``'s code, written out here.
"""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import data
from fcn_jax.data import nyud

TRAIN = ["5449", "6140", "5902"]
VAL = ["5010", "5011"]
TEST = ["5133", "6002", "6314"]
# data/nyud/classes.txt of the reference.
CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
           "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat", "clothes",
           "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain", "box",
           "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
           "otherfurniture", "otherprop")


def reference_label(segmentation: np.ndarray) -> np.ndarray:
    """nyud_layers.load_label."""
    label = segmentation.astype(np.uint8)
    label -= 1
    return label


def reference_depth(depth_png: Path) -> np.ndarray:
    """nyud_layers.load_depth (without the leading axis)."""
    d = np.array(Image.open(depth_png), dtype=np.float32)
    d = np.log(d)
    d -= np.array((7.844,), dtype=np.float32)
    return d


def fake(image_id: str, shape=(14, 19)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(int(image_id))
    dtype = np.uint8 if int(image_id) % 2 else np.float64  # both as MATLAB would store them
    return {"image": rng.integers(0, 256, shape + (3,)).astype(np.uint8),
            "hha": rng.integers(0, 256, shape + (3,)).astype(np.uint8),
            "depth": rng.integers(400, 10000, shape).astype(np.uint16),  # mm: needs all 16 bits
            "segmentation": rng.integers(0, 41, shape).astype(dtype)}


def write_tree(root: Path, train=TRAIN, val=VAL, test=TEST, overrides: dict[str, dict] | None = None) -> dict:
    examples = {}
    for image_id in train + val + test:
        example = {**fake(image_id), **(overrides or {}).get(image_id, {})}
        examples[image_id] = example
        stem = f"img_{image_id}"
        for folder, key in (("images", "image"), ("hha", "hha"), ("depth", "depth")):
            (root / "data" / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(example[key]).save(root / "data" / folder / f"{stem}.png")
        (root / "segmentation").mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(root / "segmentation" / f"{stem}.mat", {"segmentation": example["segmentation"]})
    for name, ids in (("train", train), ("val", val), ("test", test)):
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return examples


def read_split(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """nyud.tar.gz (nyud/... inside) in the manual dir; both configs built from one extraction."""
    work = tmp_path_factory.mktemp("nyud")
    examples = write_tree(work / "tree" / "nyud")
    manual = work / "manual"
    manual.mkdir()
    with tarfile.open(manual / "nyud.tar.gz", "w:gz") as tar:
        tar.add(work / "tree" / "nyud", arcname="nyud")
    builders = {config: data.prepare(f"nyud/{config}", data_dir=work / "tfds", manual_dir=manual,
                                     verify_split_sizes=False) for config in ("trainval_test", "train_val")}
    return work, builders, examples


def test_every_stream_and_label_as_the_reference_loads_them(built):
    work, builders, examples = built
    tree = work / "tree" / "nyud"
    for split, ids in (("train", TRAIN + VAL), ("validation", TEST)):
        stored = read_split(builders["trainval_test"], split)
        assert [e["file_name"].decode() for e in stored] == [f"img_{i}" for i in ids]  # list order
        for e in stored:
            image_id = e["file_name"].decode()[len("img_"):]
            raw = examples[image_id]
            assert e["segmentation"].dtype == np.uint8 and e["depth"].dtype == np.uint16
            np.testing.assert_array_equal(e["segmentation"], reference_label(raw["segmentation"]))
            np.testing.assert_array_equal(e["image"], raw["image"])  # PNG: lossless
            np.testing.assert_array_equal(e["hha"], raw["hha"])
            np.testing.assert_array_equal(e["depth"], raw["depth"])
            np.testing.assert_allclose(nyud.log_depth(e["depth"]),
                                       reference_depth(tree / "data" / "depth" / f"img_{image_id}.png"), rtol=1e-6)
            assert (e["segmentation"] == 255).any() and e["segmentation"][e["segmentation"] != 255].max() <= 39


def test_train_val_config_and_meta(built):
    work, builders, _ = built
    assert [e["file_name"].decode() for e in read_split(builders["train_val"], "train")] == [f"img_{i}" for i in TRAIN]
    assert [e["file_name"].decode() for e in read_split(builders["train_val"], "validation")] == [
        f"img_{i}" for i in VAL]
    assert sorted(p.name for p in (work / "tfds" / "downloads" / "extracted").iterdir()) == ["nyud.tar.gz"]
    assert nyud.NYUD_CLASSES == CLASSES
    info = builders["trainval_test"].info.metadata
    assert info["class_names"] == list(CLASSES)
    assert info["mean_bgr"] == [116.190, 97.203, 92.318] and info["mean_hha"] == [132.431, 94.076, 118.477]
    assert info["mean_log_depth"] == 7.844
    meta = data.dataset_meta("nyud", data_dir=work / "tfds")
    assert meta.name == "nyud/trainval_test" and meta.num_classes == 40
    assert dict(meta.splits) == {"train": 5, "validation": 3}
    unbuilt = work / "unbuilt"
    assert dict(data.dataset_meta("nyud", data_dir=unbuilt).splits) == {"train": 795, "validation": 654}
    assert dict(data.dataset_meta("nyud/train_val", data_dir=unbuilt).splits) == {"train": 381, "validation": 414}


def test_pipeline_passes_over_the_built_source(built):
    _, builders, _ = built
    from fcn_jax.data.pipeline import TrainInput, eval_batches, train_iterator

    builder = builders["trainval_test"]
    batches = list(eval_batches(builder.as_data_source(split="validation"), batch_size=2, convention="caffe",
                                num_threads=1))
    assert sorted(n for b in batches for n in b.names if n) == sorted(f"img_{i}" for i in TEST)
    cfg = TrainInput(mode="modern", batch_size=2, crop_size=12, seed=0)
    with train_iterator(builder.as_data_source(split="train"), cfg, num_threads=1) as it:
        batch = next(it)
    assert batch["image"].shape == (2, 12, 12, 3) and batch["label"].shape == (2, 12, 12)


def test_trainval_list_is_used_when_present_and_sizes_checked(tmp_path):
    root = tmp_path / "m" / "nyud"
    write_tree(root, ["5449"], ["5010"], ["5133"])
    (root / "trainval.txt").write_text("5010\n5449\n")
    builder = data.prepare("nyud", data_dir=tmp_path / "a", manual_dir=tmp_path / "m", verify_split_sizes=False)
    assert [e["file_name"].decode() for e in read_split(builder, "train")] == ["img_5010", "img_5449"]
    with pytest.raises(data.DataError, match=r"split 'train' has 2 examples, expected 795"):
        data.prepare("nyud", data_dir=tmp_path / "b", manual_dir=tmp_path / "m")
    assert not any((tmp_path / "b").rglob("dataset_info.json"))


def test_missing_source_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.prepare("nyud", data_dir=tmp_path / "a", manual_dir=tmp_path / "empty")
    assert "\n" not in str(info.value) and "nyud.tar.gz" in str(info.value)
    root = tmp_path / "m" / "nyud"
    write_tree(root, ["5449"], ["5010"], ["5133"])
    (root / "data" / "hha" / "img_5133.png").unlink()
    with pytest.raises(data.DataError, match=r"hha/img_5133\.png \(split validation, id img_5133\) does not exist"):
        data.prepare("nyud", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)
    (root / "test.txt").unlink()
    with pytest.raises(data.DataError, match=r"list file .*nyud/test\.txt does not exist"):
        data.prepare("nyud", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)


@pytest.mark.parametrize("override, message", [
    ({"segmentation": np.full((14, 19), 41, np.uint8)}, r"img_5449\.mat: label value 41 is outside 0\.\.40"),
    ({"depth": np.full((14, 19), 200, np.uint8)}, r"img_5449\.png: expected a 16-bit single-channel depth PNG"),
    ({"hha": np.full((14, 19), 20, np.uint8)}, r"img_5449\.png: expected a 3-channel 8-bit HHA PNG"),
    ({"segmentation": np.zeros((13, 19), np.uint8)}, r"img_5449\.mat: size \(13, 19\) differs from image"),
])
def test_bad_files_stop_the_build(tmp_path, override, message):
    write_tree(tmp_path / "m" / "nyud", ["5449"], [], ["5133"], overrides={"5449": override})
    with pytest.raises(data.DataError, match=message) as info:
        data.prepare("nyud", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)
    assert "\n" not in str(info.value)
