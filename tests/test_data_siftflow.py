"""The ``sift_flow`` builder on a fake SIFT Flow release in the real formats.

JPEG images and ``.mat`` label files (field ``S``, plus the dataset's ``names`` list) under
``{Images,SemanticLabels,GeoLabels}/spatial_envelope_256x256_static_8outdoorcategories``, the
reference's ``trainval.txt`` / ``test.txt`` lists, and an unannotated image the lists leave out.
Expected labels are re-derived with ``siftflow_layers.py``'s shift, written out here.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from fcn_jax import data
from fcn_jax.data import sift_flow

SUB = "spatial_envelope_256x256_static_8outdoorcategories"
TRAIN = ["forest_for121", "tallbuilding_a812069", "street_bost64", "coast_n291065"]
TEST = ["mountain_nat426", "coast_natu975", "insidecity_art947"]
UNANNOTATED = "highway_bost181"  # on disk, in no list
# data/sift-flow/classes.txt of the reference.
SEMANTIC = ("awning", "balcony", "bird", "boat", "bridge", "building", "bus", "car", "cow", "crosswalk", "desert",
            "door", "fence", "field", "grass", "moon", "mountain", "person", "plant", "pole", "river", "road", "rock",
            "sand", "sea", "sidewalk", "sign", "sky", "staircase", "streetlight", "sun", "tree", "window")
GEOMETRIC = ("sky", "horizontal", "vertical")


def reference_labels(semantic_s: np.ndarray, geometric_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """siftflow_layers.load_label for both label types."""
    semantic = semantic_s.astype(np.uint8)
    semantic -= 1
    geometric = geometric_s.copy()
    geometric[geometric == -1] = 0
    geometric = geometric.astype(np.uint8)
    geometric -= 1
    return semantic, geometric


def fake(image_id: str, shape=(18, 22)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(list(image_id.encode()))
    semantic = rng.integers(0, 34, shape).astype(np.float64)  # MATLAB doubles, 0 = unlabelled
    geometric = rng.choice(np.array([-1, 0, 1, 2, 3], np.int16), shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    base = rng.integers(40, 200, 3)
    image = np.clip(base + np.stack([2 * yy, 3 * xx, yy + xx], -1), 0, 255).astype(np.uint8)  # smooth: JPEG-safe
    return image, semantic, geometric


def write_tree(root: Path, train: list[str], test: list[str], lists_in: Path | None = None,
               overrides: dict[str, dict] | None = None) -> dict[str, tuple]:
    examples = {}
    for image_id in train + test + [UNANNOTATED]:
        image, semantic, geometric = fake(image_id)
        semantic = (overrides or {}).get(image_id, {}).get("S", semantic)
        examples[image_id] = (image, semantic, geometric)
        for folder in ("Images", "SemanticLabels", "GeoLabels"):
            (root / folder / SUB).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "Images" / SUB / f"{image_id}.jpg", quality=98)
        scipy.io.savemat(root / "SemanticLabels" / SUB / f"{image_id}.mat",
                         {"S": semantic, "names": np.array(SEMANTIC, dtype=object)})
        scipy.io.savemat(root / "GeoLabels" / SUB / f"{image_id}.mat",
                         {"S": geometric, "names": np.array(GEOMETRIC, dtype=object)})
    lists = lists_in or root
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "trainval.txt").write_text("\n".join(train))  # the reference's files end without a newline
    (lists / "test.txt").write_text("\n".join(test))
    return examples


def read_split(builder, split: str) -> list[dict]:
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """SiftFlowDataset.zip (SiftFlowDataset/... inside) in the manual dir, the lists beside it."""
    work = tmp_path_factory.mktemp("siftflow")
    manual = work / "manual"
    examples = write_tree(work / "tree" / "SiftFlowDataset", TRAIN, TEST, lists_in=manual)
    with zipfile.ZipFile(manual / "SiftFlowDataset.zip", "w") as zf:
        for path in sorted((work / "tree").rglob("*")):
            zf.write(path, path.relative_to(work / "tree").as_posix())
    builder = data.prepare("sift_flow", data_dir=work / "tfds", manual_dir=manual, verify_split_sizes=False)
    return work, builder, examples


def test_labels_follow_the_reference_shift(built):
    work, builder, examples = built
    for split, ids in (("train", TRAIN), ("validation", TEST)):
        stored = read_split(builder, split)
        assert [e["file_name"].decode() for e in stored] == ids  # list order; the unannotated image left out
        for e in stored:
            image, semantic_s, geometric_s = examples[e["file_name"].decode()]
            semantic, geometric = reference_labels(semantic_s, geometric_s)
            for key, expected in (("segmentation", semantic), ("geometric", geometric)):
                assert e[key].dtype == np.uint8
                np.testing.assert_array_equal(e[key], expected)
            assert e["image"].shape == image.shape and np.abs(e["image"].astype(int) - image).mean() < 4
            assert set(np.unique(e["segmentation"])) <= set(range(33)) | {255}
            assert set(np.unique(e["geometric"])) <= {0, 1, 2, 255}
            assert (e["segmentation"] == 255).any() and (e["geometric"] == 255).any()


def test_classes_meta_and_names_in_the_files(built):
    work, builder, _ = built
    assert sift_flow.SIFT_FLOW_CLASSES == SEMANTIC and sift_flow.GEOMETRIC_CLASSES == GEOMETRIC
    assert builder.info.metadata["class_names"] == list(SEMANTIC)
    assert builder.info.metadata["geometric_class_names"] == list(GEOMETRIC)
    assert builder.info.metadata["mean_bgr"] == [114.578, 115.294, 108.353]
    mat = work / "tree" / "SiftFlowDataset" / "SemanticLabels" / SUB / f"{TRAIN[0]}.mat"
    assert sift_flow._mat_names(mat) == list(SEMANTIC)
    meta = data.dataset_meta("sift_flow", data_dir=work / "tfds")
    assert meta.name == "sift_flow/default" and meta.num_classes == 33
    assert dict(meta.splits) == {"train": len(TRAIN), "validation": len(TEST)}
    assert dict(data.dataset_meta("sift_flow", data_dir=work / "unbuilt").splits) == {"train": 2486, "validation": 200}


def test_pipeline_passes_over_the_built_source(built):
    _, builder, _ = built
    from fcn_jax.data.pipeline import TrainInput, eval_batches, train_iterator

    batches = list(eval_batches(builder.as_data_source(split="validation"), batch_size=2, convention="caffe",
                                num_threads=1))
    assert sorted(n for b in batches for n in b.names if n) == sorted(TEST)
    with train_iterator(builder.as_data_source(split="train"), TrainInput(mode="reference", batch_size=1),
                        num_threads=1) as it:
        batch = next(it)
    assert batch["image"].shape == (1, 18, 22, 3) and batch["label"].shape == (1, 18, 22)


def test_split_sizes_checked_and_missing_lists(tmp_path, built):
    work, _, _ = built
    with pytest.raises(data.DataError, match=r"split 'train' has 4 examples, expected 2486"):
        data.prepare("sift_flow", data_dir=work / "tfds_checked", manual_dir=work / "manual")
    assert not any((work / "tfds_checked").rglob("dataset_info.json"))
    write_tree(tmp_path / "m" / "sift-flow", ["forest_for121"], ["coast_natu975"])
    (tmp_path / "m" / "sift-flow" / "test.txt").unlink()
    with pytest.raises(data.DataError, match=r"list file .*sift-flow/test\.txt does not exist"):
        data.prepare("sift_flow", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)


def test_missing_source_and_file_are_one_line_errors(tmp_path):
    with pytest.raises(data.DataError) as info:
        data.prepare("sift_flow", data_dir=tmp_path / "a", manual_dir=tmp_path / "empty")
    assert "\n" not in str(info.value) and "SiftFlowDataset.zip" in str(info.value)
    root = tmp_path / "m" / "sift-flow"
    write_tree(root, ["forest_for121"], ["coast_natu975"])
    (root / "GeoLabels" / SUB / "coast_natu975.mat").unlink()
    with pytest.raises(data.DataError, match=r"GeoLabels/.*/coast_natu975\.mat \(split validation, id coast_natu975\) "
                                             r"does not exist"):
        data.prepare("sift_flow", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)


def test_bad_label_value_stops_the_build(tmp_path):
    bad = fake("forest_for121")[1]
    bad[3, 4] = 34
    write_tree(tmp_path / "m", ["forest_for121"], ["coast_natu975"], overrides={"forest_for121": {"S": bad}})
    with pytest.raises(data.DataError, match=r"forest_for121\.mat: semantic label value 34 is outside 0\.\.33") as info:
        data.prepare("sift_flow", data_dir=tmp_path / "b", manual_dir=tmp_path / "m", verify_split_sizes=False)
    assert "\n" not in str(info.value)
