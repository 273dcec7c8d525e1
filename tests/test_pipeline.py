"""Input pipeline: alignment under augmentation, sharding, determinism, resumption, eval bucketing."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fcn_jax.data.pipeline import TrainInput, augment, bucket_shape, eval_batches, train_iterator
from fcn_jax.preprocess import CAFFE_MEAN_BGR

MEAN_B, MEAN_G, MEAN_R = CAFFE_MEAN_BGR


def coordinate_example(height: int, width: int, label_axis: int) -> dict:
    """Image R = row, G = column, B = 7 + label_axis; label = row (axis 0) or column (axis 1). Sides < 255."""
    ys, xs = np.mgrid[:height, :width]
    image = np.stack([ys, xs, np.full_like(ys, 7 + label_axis)], -1).astype(np.uint8)
    label = (ys if label_axis == 0 else xs).astype(np.uint8)
    return {"image": image, "segmentation": label, "file_name": f"coords{label_axis}"}


def index_source(n: int, seed: int = 0) -> list[dict]:
    """Example i: a constant image whose R, G encode i; label i % 21; sides 5..20."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(5, 21, 2))
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0], image[..., 1] = i % 256, i // 256
        out.append({"image": image, "segmentation": np.full((h, w), i % 21, np.uint8), "file_name": f"ex{i}"})
    return out


def decode_indices(batch: dict) -> list[int]:
    """Example indices of a caffe-preprocessed index_source batch (read at pixel (0, 0))."""
    image = np.asarray(batch["image"])[:, 0, 0]
    r, g = np.rint(image[:, 2] + MEAN_R).astype(int), np.rint(image[:, 1] + MEAN_G).astype(int)
    return list(r + 256 * g)


def take(iterator, n: int) -> list[dict]:
    return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(n)]


# ------------------------------------------------------------------------------------------------
# Augmentation.

def test_augmentation_keeps_image_and_label_aligned():
    """Through the whole pipeline: the label at every pixel names the coordinate the image shows."""
    source = [coordinate_example(150, 200, 0), coordinate_example(150, 200, 1)]
    cfg = TrainInput(batch_size=2, crop_size=96, scale_range=(0.5, 2.0), flip=True, convention="caffe", seed=3)
    flips, padded, axes = set(), 0, set()
    with train_iterator(source, cfg, num_threads=1) as it:
        for batch in take(it, 30):
            for image, label in zip(batch["image"], batch["label"]):
                valid = label != 255
                label_axis = int(np.rint(image[valid][0, 0] + MEAN_B)) - 7  # B channel = 7 + label axis
                axes.add(label_axis)
                coord = image[..., 2] + MEAN_R if label_axis == 0 else image[..., 1] + MEAN_G
                error = coord[valid] - label[valid]
                assert np.abs(error).max() <= 1.05 and np.abs(error).mean() <= 0.4
                if label_axis == 1 and valid.all(axis=1).any():  # columns run left to right unless flipped
                    row = label[valid.all(axis=1).argmax()]
                    flips.add(bool(row[0] > row[-1]))
                # padding (bottom/right where the scaled image is smaller): mean colour, void label
                assert np.all(image[~valid] == 0.0)
                padded += int((~valid).any())
    assert axes == {0, 1} and flips == {True, False} and padded > 0


def test_augmentation_pads_small_images_with_mean_and_void():
    cfg = TrainInput(batch_size=1, crop_size=64, scale_range=(0.5, 0.5), flip=False)
    image_crop, label_crop = augment(coordinate_example(40, 50, 0), np.random.default_rng(0), cfg)
    assert image_crop.shape == (20, 25, 3) and label_crop.shape == (20, 25)
    with train_iterator([coordinate_example(40, 50, 0)], cfg) as it:
        batch = take(it, 1)[0]
    image, label = batch["image"][0], batch["label"][0]
    assert np.all(label[:20, :25] != 255) and np.all(label[20:] == 255) and np.all(label[:, 25:] == 255)
    assert np.all(image[20:] == 0) and np.all(image[:, 25:] == 0)
    np.testing.assert_allclose(image[:20, :25, 2] + MEAN_R, image_crop[..., 0], atol=1e-3)


def test_modern_batches_have_static_shape_and_dtypes():
    cfg = TrainInput(batch_size=4, crop_size=32)
    with train_iterator(index_source(10), cfg) as it:
        batch = next(it)
    assert isinstance(batch["image"], jax.Array)
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32


def test_reference_mode_pads_whole_images_to_buckets():
    source = index_source(12)
    cfg = TrainInput(mode="reference", batch_size=3, bucket_multiple=16, seed=5)
    with train_iterator(source, cfg) as it:
        for batch in take(it, 4):
            assert batch["image"].shape[1] % 16 == 0 and batch["image"].shape[2] % 16 == 0
            for row, i in enumerate(decode_indices(batch)):
                h, w = source[i]["segmentation"].shape
                assert np.all(batch["label"][row, :h, :w] == i % 21)
                assert np.all(batch["label"][row, h:] == 255) and np.all(batch["label"][row, :, w:] == 255)
                assert np.all(batch["image"][row, h:] == 0) and np.all(batch["image"][row, :, w:] == 0)


# ------------------------------------------------------------------------------------------------
# Order, shards, resumption.

@pytest.mark.parametrize("process_count", [2, 3])
def test_process_shards_are_disjoint_cover_the_split_and_match_one_process(process_count):
    n, batch_size = 30, 6
    source = index_source(n)
    cfg = TrainInput(mode="reference", batch_size=batch_size, bucket_multiple=32, seed=11)
    steps = 2 * n // batch_size  # two epochs

    def run(index: int, count: int) -> list[list[int]]:
        with train_iterator(source, cfg, process_index=index, process_count=count) as it:
            return [decode_indices(b) for b in take(it, steps)]

    single = run(0, 1)
    shards = [run(k, process_count) for k in range(process_count)]
    for step in range(steps):
        rows = [shard[step] for shard in shards]
        assert all(len(r) == batch_size // process_count for r in rows)
        assert sum(rows, []) == single[step]  # global batch independent of the process count
    for epoch in range(2):
        seen = sum((sum((shard[s] for shard in shards), []) for s in range(epoch * 5, epoch * 5 + 5)), [])
        assert sorted(seen) == list(range(n))  # disjoint and covering within each epoch
    assert sum(single[:5], []) != sum(single[5:], [])  # reshuffled per epoch


def test_same_seed_same_order_other_seed_other_order():
    source = index_source(20)

    def order(seed: int) -> list[int]:
        with train_iterator(source, TrainInput(mode="reference", batch_size=4, bucket_multiple=128, seed=seed)) as it:
            return sum((decode_indices(b) for b in take(it, 5)), [])

    assert order(1) == order(1)
    assert order(1) != order(2)


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_resume_yields_the_uninterrupted_batches(process_index, process_count):
    source = index_source(14)
    cfg = TrainInput(batch_size=4, crop_size=24, seed=7)
    kwargs = dict(process_index=process_index, process_count=process_count)
    with train_iterator(source, cfg, **kwargs) as it:
        take(it, 3)
        state = json.loads(json.dumps(it.get_state()))
        expected = take(it, 4)
    with train_iterator(source, cfg, **kwargs) as resumed:
        resumed.set_state(state)
        got = take(resumed, 4)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_close_then_continue_and_state_mismatch():
    source = index_source(9)
    cfg = TrainInput(batch_size=3, crop_size=16, seed=2)
    with train_iterator(source, cfg) as it:
        reference = take(it, 4)
    it = train_iterator(source, cfg)
    first = take(it, 2)
    it.close()  # stops the threads; the position is kept
    rest = take(it, 2)
    it.close()
    for a, b in zip(reference, first + rest):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert it.step == 4 and it.get_state()["step"] == 4
    with pytest.raises(ValueError, match="seed"):
        it.set_state(dict(it.get_state(), seed=3))


def test_sharded_output_is_a_global_array_with_the_given_sharding():
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    with train_iterator(index_source(4), TrainInput(batch_size=2, crop_size=8), sharding=sharding) as it:
        batch = next(it)
    assert batch["image"].sharding == sharding and batch["label"].sharding == sharding
    eval_batch = next(eval_batches(index_source(3), batch_size=2, convention="torchvision", sharding=sharding))
    assert eval_batch.image.sharding == sharding


def test_invalid_layouts_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        train_iterator(index_source(4), TrainInput(batch_size=3), process_index=0, process_count=2)
    with pytest.raises(ValueError, match="mode"):
        TrainInput(mode="fancy")
    with pytest.raises(ValueError, match="divisible"):
        eval_batches(index_source(4), batch_size=3, convention="caffe", process_index=0, process_count=2)


# ------------------------------------------------------------------------------------------------
# Evaluation.

def test_bucket_shape():
    assert bucket_shape([(500, 375), (333, 500)], 128) == (512, 512)
    assert bucket_shape([(64, 65)], 32) == (64, 96)
    assert bucket_shape([], 16) == (16, 16)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_buckets_cover_every_pixel_of_every_image_exactly_once(process_count):
    rng = np.random.default_rng(4)
    source = []
    for i in range(7):
        h, w = (int(v) for v in rng.integers(10, 45, 2))
        ys, xs = np.mgrid[:h, :w]
        image = np.stack([ys, xs, np.full_like(ys, i)], -1).astype(np.uint8)
        source.append({"image": image, "segmentation": ((ys + xs + i) % 21).astype(np.uint8),
                       "file_name": np.bytes_(f"img{i}")})
    batch_size, multiple = 4, 16
    coverage = [np.zeros(e["segmentation"].shape, int) for e in source]
    shapes = set()
    for k in range(process_count):
        batches = list(eval_batches(source, batch_size=batch_size, convention="caffe", bucket_multiple=multiple,
                                    process_index=k, process_count=process_count))
        assert len(batches) == 2  # ceil(7 / 4) on every process
        for batch in batches:
            image, label = np.asarray(batch.image), np.asarray(batch.label)
            assert label.dtype == np.int32 and image.shape[0] == batch_size // process_count
            assert image.shape[1] % multiple == 0 and image.shape[2] % multiple == 0
            shapes.add(image.shape[1:3])
            for row, index in enumerate(batch.indices):
                if index < 0:  # filler
                    assert np.all(label[row] == 255) and tuple(batch.sizes[row]) == (0, 0)
                    assert batch.names[row] == ""
                    continue
                h, w = source[index]["segmentation"].shape
                assert tuple(batch.sizes[row]) == (h, w) and batch.names[row] == f"img{index}"
                np.testing.assert_array_equal(label[row, :h, :w], source[index]["segmentation"])
                np.testing.assert_allclose(image[row, :h, :w, 2] + MEAN_R, source[index]["image"][..., 0], atol=1e-3)
                np.testing.assert_allclose(image[row, :h, :w, 1] + MEAN_G, source[index]["image"][..., 1], atol=1e-3)
                assert np.all(label[row, h:] == 255) and np.all(label[row, :, w:] == 255)
                assert np.all(image[row, h:] == 0) and np.all(image[row, :, w:] == 0)
                coverage[index] += 1
    assert all(np.all(c == 1) for c in coverage)
    assert len(shapes) <= 4


_TWO_DEVICE_SCRIPT = """
import numpy as np, jax
from fcn_jax.data.pipeline import TrainInput, eval_batches, train_iterator
source = [{"image": np.full((9, 11, 3), i, np.uint8), "segmentation": np.full((9, 11), i, np.uint8),
           "file_name": str(i)} for i in range(8)]
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
cfg = TrainInput(mode="reference", batch_size=4, bucket_multiple=16)
with train_iterator(source, cfg, sharding=sharding) as sharded, train_iterator(source, cfg) as plain:
    for _ in range(3):
        a, b = next(sharded), next(plain)
        assert len(a["label"].addressable_shards) == 2
        assert {s.data.shape for s in a["label"].addressable_shards} == {(2, 16, 16)}
        np.testing.assert_array_equal(np.asarray(a["label"]), np.asarray(b["label"]))
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
batch = next(eval_batches(source, batch_size=4, convention="caffe", bucket_multiple=16, sharding=sharding))
assert batch.image.sharding == sharding and len(batch.image.addressable_shards) == 2
print("ok")
"""


def test_batches_shard_over_two_devices():
    """A global batch split over a 2-device data mesh equals the unsharded batch."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
