"""The synthetic ``shapes`` builder: determinism, label layout, void band, metadata, tfds round trip."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from fcn_jax import data
from fcn_jax.data import shapes

TINY = shapes.ShapesConfig(name="unit", num_train=12, num_validation=5, min_size=24, max_size=48, seed=3)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = data.prepare("shapes", data_dir=data_dir, config=TINY)
    return data_dir, builder


def test_split_sizes_class_names_and_meta(built):
    data_dir, builder = built
    assert {s: i.num_examples for s, i in builder.info.splits.items()} == {"train": 12, "validation": 5}
    assert builder.info.metadata["class_names"] == list(shapes.SHAPES_CLASSES)
    meta = data.dataset_meta("shapes", data_dir=data_dir, config=TINY)
    assert meta.name == "shapes/unit" and meta.num_classes == 7 and meta.class_names == shapes.SHAPES_CLASSES
    assert dict(meta.splits) == {"train": 12, "validation": 5}
    assert (meta.train_split, meta.eval_split) == ("train", "validation")


def test_meta_before_building_comes_from_the_config(tmp_path):
    meta = data.dataset_meta("shapes", data_dir=tmp_path)
    assert meta.name == "shapes/default" and dict(meta.splits) == {"train": 1000, "validation": 200}
    assert not data.get_builder("shapes", data_dir=tmp_path).is_prepared()


def test_stored_examples_equal_the_generator_and_are_deterministic(built):
    data_dir, _ = built
    source = data.load_split("shapes", "validation", data_dir=data_dir, config=TINY)
    assert len(source) == 5
    for i in range(len(source)):
        stored = source[i]
        name = stored["file_name"].decode()
        split, index = name.rsplit("_", 1)
        fresh = shapes.generate_example(TINY, split, int(index))
        np.testing.assert_array_equal(stored["image"], fresh["image"])
        np.testing.assert_array_equal(stored["segmentation"], fresh["segmentation"])
    again = shapes.generate_example(TINY, "train", 4)
    np.testing.assert_array_equal(again["image"], shapes.generate_example(TINY, "train", 4)["image"])
    other = shapes.ShapesConfig(name="other", num_train=12, num_validation=5, min_size=24, max_size=48, seed=4)
    assert not np.array_equal(shapes.generate_example(other, "train", 4)["image"][:24, :24], again["image"][:24, :24])


def test_images_labels_and_void_band():
    config = shapes.ShapesConfig(name="check", num_train=40, num_validation=1, min_size=48, max_size=96)
    present = set()
    for i in range(40):
        example = shapes.generate_example(config, "train", i)
        image, label = example["image"], example["segmentation"]
        assert image.dtype == np.uint8 and label.dtype == np.uint8 and image.shape[:2] == label.shape
        assert 48 <= label.shape[0] <= 96 and 48 <= label.shape[1] <= 96
        values = set(np.unique(label).tolist())
        assert values <= set(range(7)) | {255}
        present |= values
        # no two different classes touch: a void band always separates them
        for a, b in ((label[1:], label[:-1]), (label[:, 1:], label[:, :-1])):
            assert not np.any((a != b) & (a != 255) & (b != 255))
        # the band is thin: every void pixel has a non-void pixel within 2 px
        void = label == 255
        near = np.zeros_like(void)
        padded = np.pad(~void, 2)
        for dy in range(5):
            for dx in range(5):
                near |= padded[dy:dy + label.shape[0], dx:dx + label.shape[1]]
        assert np.all(near[void])
    assert present == set(range(7)) | {255}  # every class (and void) shows up


def test_thin_bars_and_small_objects_exist():
    """Fine structure that stride-32 outputs cannot resolve: bars vanish under a 5x5 erosion,
    and many objects are under 8x8 px."""
    config = shapes.CONFIGS[0]
    bars = small = large = 0
    for i in range(60):
        label = shapes.generate_example(config, "train", i)["segmentation"]
        for kind in range(1, 7):
            components, count = ndimage.label(label == kind)
            for c in range(1, count + 1):
                mask = components == c
                core = ndimage.binary_erosion(mask, np.ones((5, 5), bool))
                if kind == shapes.BAR:
                    bars += 1
                    assert not core.any(), f"bar in example {i} is thicker than 4 px"
                small += int(mask.sum() <= 64)
                large += int(core.any())
    assert bars >= 10 and small >= 20 and large >= 20


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="min_size"):
        shapes.ShapesConfig(name="bad", min_size=10, max_size=8)
    with pytest.raises(data.DataError, match="unknown config"):
        data.get_builder("shapes/nope")
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.get_builder("nope")
