"""Exact-size evaluation and training (the reference's), and Caffe's sampling with replacement.

References are computed here independently: per-image ``model.apply`` at each image's own size with a
NumPy confusion matrix, a plan derived by sorting, ``random.Random(seed).randint`` draws, grain's
per-epoch shuffle.
"""
from __future__ import annotations

import json
import random

import grain
import jax
import numpy as np
import pytest

from fcn_jax import create_model
from fcn_jax.data.pipeline import TrainInput, eval_batches, eval_plan, example_sizes, train_iterator
from fcn_jax.evaluate import evaluate
from fcn_jax.preprocess import CAFFE_MEAN_BGR, preprocess
from test_evaluate import make_examples, random_variables

N = 4
MEAN_B, MEAN_G, MEAN_R = CAFFE_MEAN_BGR
# odd sizes, some repeated; 5 distinct sizes
SIZES = [(37, 53), (53, 37), (37, 53), (41, 41), (37, 53), (29, 47), (41, 41), (53, 37), (35, 35)]
EVAL_SIZES = [(37, 53), (53, 37), (37, 53), (41, 41), (37, 53), (53, 37), (41, 41), (41, 41)]  # 3 programs


def random_examples(sizes, seed=0):
    """Random uint8 images; labels 0..N-1 with about 10% void."""
    return make_examples(sizes, num_classes=N, seed=seed)


def index_examples(sizes):
    """Example i: a constant image whose R, G encode i; label i % 21."""
    out = []
    for i, (h, w) in enumerate(sizes):
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0], image[..., 1] = i % 256, i // 256
        out.append({"image": image, "segmentation": np.full((h, w), i % 21, np.uint8), "file_name": f"ex{i}"})
    return out


def decode(image: np.ndarray) -> list[int]:
    """Example indices of caffe-preprocessed index_examples rows (B, H, W, 3), read at pixel (0, 0)."""
    pixel = np.asarray(image)[:, 0, 0]
    return list(np.rint(pixel[:, 2] + MEAN_R).astype(int) + 256 * np.rint(pixel[:, 1] + MEAN_G).astype(int))


def random_params(model, seed=0):
    """Random, well-scaled values for every parameter (score layers included, which init zeroes)."""
    return random_variables(model, seed)["params"]


def numpy_hist(label, pred):
    label, pred = np.asarray(label).ravel().astype(int), np.asarray(pred).ravel().astype(int)
    keep = label < N
    return np.bincount(N * label[keep] + pred[keep], minlength=N * N).reshape(N, N)


# ------------------------------------------------------------------------------------------------
# Evaluation at exact size.

def test_default_evaluation_equals_per_image_apply_and_buckets_do_not():
    model = create_model("fcn8s", N, width=1 / 16)
    params = random_params(model)
    source = random_examples(EVAL_SIZES)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x))
    want_preds = [np.asarray(apply(params, preprocess(e["image"][None])))[0].argmax(-1) for e in source]
    want = sum(numpy_hist(e["segmentation"], p) for e, p in zip(source, want_preds))
    assert len(np.unique(np.concatenate([p.ravel() for p in want_preds]))) > 1  # a non-trivial prediction

    got_preds = {}

    def keep(batch, preds):
        for row, index in enumerate(batch.indices):
            if index >= 0:
                h, w = batch.sizes[row]
                got_preds[int(index)] = preds[row, :h, :w]

    exact = evaluate(model, params, eval_batches(source, batch_size=2, convention="caffe"), N, on_batch=keep,
                     progress=False)
    assert exact.num_images == len(source)
    np.testing.assert_array_equal(exact.hist, want)  # bit for bit
    for i, pred in enumerate(want_preds):
        np.testing.assert_array_equal(got_preds[i], pred)

    # Padding into a 64x64 bucket unmasked (evaluate(mask=False)) changes the activations (ReLU of the
    # bias, ceil-pooling sizes; tests/test_masked_buckets.py has the masked, exact way): the
    # same pixels are counted, but predictions differ (here 1-3% of the pixels of every image).
    got_preds.clear()
    bucketed = evaluate(model, params, eval_batches(source, batch_size=2, convention="caffe", bucket_multiple=64),
                        N, on_batch=keep, progress=False)
    assert bucketed.num_images == len(source) and bucketed.hist.sum() == want.sum()
    assert sum(int(np.sum(got_preds[i] != p)) for i, p in enumerate(want_preds)) > 0


# ------------------------------------------------------------------------------------------------
# The exact-size plan.

def expected_plan(sizes, batch_size):
    """Independent: indices sorted by (first appearance of their size, index), chunked per size."""
    first = {}
    for i, s in enumerate(sizes):
        first.setdefault(tuple(s), i)
    order = sorted(range(len(sizes)), key=lambda i: (first[tuple(sizes[i])], i))
    plan = []
    for s in sorted(first, key=first.get):
        members = [i for i in order if tuple(sizes[i]) == s]
        for k in range(0, len(members), batch_size):
            chunk = members[k:k + batch_size]
            plan.append((s, chunk + [-1] * (batch_size - len(chunk))))
    return plan


def test_eval_plan_groups_sizes_in_first_appearance_order():
    plan = eval_plan(SIZES, 2)
    assert [(s, list(rows)) for s, rows in plan] == expected_plan(SIZES, 2)
    assert [(s, list(rows)) for s, rows in eval_plan(SIZES, 4)] == [
        ((37, 53), [0, 2, 4, -1]), ((53, 37), [1, 7, -1, -1]), ((41, 41), [3, 6, -1, -1]),
        ((29, 47), [5, -1, -1, -1]), ((35, 35), [8, -1, -1, -1])]
    assert eval_plan([], 2) == []


@pytest.mark.parametrize("process_count", [1, 2])
def test_exact_batches_cover_every_example_once_unpadded(process_count):
    sizes = SIZES + [(37, 53), (20, 30), (37, 53), (20, 30)]
    source = index_examples(sizes)
    batch_size, local = 4, 4 // process_count
    plan = expected_plan(sizes, batch_size)
    np.testing.assert_array_equal(example_sizes(source, num_threads=2), sizes)
    seen = []
    for k in range(process_count):
        batches = list(eval_batches(source, batch_size=batch_size, convention="caffe", process_index=k,
                                    process_count=process_count, num_threads=2))
        assert len(batches) == len(plan)  # the same plan on every process
        for batch, (shape, rows) in zip(batches, plan):
            image, label = np.asarray(batch.image), np.asarray(batch.label)
            assert image.shape == (local, *shape, 3) and label.shape == (local, *shape)  # uniform, no padding
            assert list(batch.indices) == rows[k * local:(k + 1) * local]  # rows [k*b, (k+1)*b)
            for row, index in enumerate(batch.indices):
                if index < 0:  # filler: same shape, all void
                    assert np.all(label[row] == 255) and tuple(batch.sizes[row]) == (0, 0)
                    assert batch.names[row] == ""
                    continue
                assert tuple(batch.sizes[row]) == shape == sizes[index] and batch.names[row] == f"ex{index}"
                np.testing.assert_array_equal(label[row], source[index]["segmentation"])
                np.testing.assert_array_equal(image[row], preprocess(source[index]["image"]))
                seen.append(int(index))
    assert sorted(seen) == list(range(len(sizes)))  # every example exactly once, processes disjoint


def test_given_sizes_are_used_and_checked():
    source = index_examples(SIZES[:3])
    given = [b.indices.tolist() for b in eval_batches(source, batch_size=2, convention="caffe", sizes=SIZES[:3])]
    assert given == [[0, 2], [1, -1]]
    with pytest.raises(ValueError, match="sizes"):
        eval_batches(source, batch_size=2, convention="caffe", sizes=SIZES[:2])
    wrong = [(37, 53), (37, 53), (37, 53)]
    with pytest.raises(ValueError, match="example 1 is 53x37"):
        list(eval_batches(source, batch_size=2, convention="caffe", sizes=wrong))


# ------------------------------------------------------------------------------------------------
# Training: sampling with replacement, exact size.

def reference_draws(seed, n, count):
    rng = random.Random(seed)
    return [rng.randint(0, n - 1) for _ in range(count)]


def test_replacement_order_is_caffes_randint_sequence():
    n = 13
    source = index_examples([(7 + i % 3, 9) for i in range(n)])
    cfg = TrainInput(mode="reference", batch_size=1, sampling="replacement", seed=1337)
    with train_iterator(source, cfg, num_threads=2) as it:
        got = [decode(next(it)["image"])[0] for _ in range(40)]
    assert got == reference_draws(1337, n, 40)
    with train_iterator(source, TrainInput(mode="reference", batch_size=1, sampling="replacement", seed=3)) as it:
        assert [decode(next(it)["image"])[0] for _ in range(40)] == reference_draws(3, n, 40)


@pytest.mark.parametrize("process_index,process_count", [(0, 1), (1, 2)])
def test_replacement_positions_shards_and_resumption(process_index, process_count):
    n, batch_size, local = 11, 4, 4 // process_count
    source = index_examples([(6 + i % 4, 8) for i in range(n)])
    cfg = TrainInput(mode="reference", batch_size=batch_size, bucket_multiple=16, sampling="replacement", seed=5)
    kwargs = dict(process_index=process_index, process_count=process_count, num_threads=2)
    draws = reference_draws(5, n, 10 * batch_size)
    with train_iterator(source, cfg, **kwargs) as it:
        first = [np.asarray(next(it)["image"]) for _ in range(3)]
        state = json.loads(json.dumps(it.get_state()))
        rest = [np.asarray(next(it)["image"]) for _ in range(4)]
    for i, image in enumerate(first + rest):  # global position i*B + j, process k holds rows [k*b, (k+1)*b)
        start = i * batch_size + process_index * local
        assert decode(image) == draws[start:start + local]
    with train_iterator(source, cfg, **kwargs) as again:  # reproducible
        for image in first:
            np.testing.assert_array_equal(np.asarray(next(again)["image"]), image)
    with train_iterator(source, cfg, **kwargs) as resumed:
        resumed.set_state(state)
        for image in rest:
            np.testing.assert_array_equal(np.asarray(next(resumed)["image"]), image)
        with pytest.raises(ValueError, match="sampling"):
            resumed.set_state(dict(state, sampling="epoch"))


def test_epoch_sampling_is_unchanged():
    n, batch_size = 10, 4
    source = index_examples([(6 + i % 4, 8) for i in range(n)])
    cfg = TrainInput(mode="reference", batch_size=batch_size, bucket_multiple=16, seed=9)
    assert cfg.sampling == "epoch"
    order = grain.MapDataset.range(n).shuffle(seed=9).repeat()
    with train_iterator(source, cfg, num_threads=2) as it:
        got = sum((decode(next(it)["image"]) for _ in range(6)), [])
    assert got == [int(order[p]) for p in range(6 * batch_size)]


def test_exact_reference_training_uses_whole_unpadded_images():
    sizes = [(7, 9), (12, 5), (9, 7), (7, 9)]
    source = random_examples(sizes, seed=2)
    cfg = TrainInput(mode="reference", batch_size=1, sampling="replacement", seed=4)
    draws = reference_draws(4, len(source), 12)
    with train_iterator(source, cfg, num_threads=2) as it:
        for index in draws:
            batch = next(it)
            example = source[index]
            assert batch["image"].shape == (1, *sizes[index], 3)
            np.testing.assert_array_equal(np.asarray(batch["image"])[0], preprocess(example["image"]))
            np.testing.assert_array_equal(np.asarray(batch["label"])[0], example["segmentation"])


def test_train_input_validation():
    with pytest.raises(ValueError, match="needs batch_size 1") as error:
        TrainInput(mode="reference", batch_size=2)
    assert "\n" not in str(error.value)
    TrainInput(mode="reference", batch_size=2, bucket_multiple=32)  # padded: fine
    TrainInput(mode="modern", batch_size=2)  # crops have one size
    with pytest.raises(ValueError, match="sampling"):
        TrainInput(sampling="shuffle")
    with pytest.raises(ValueError, match="bucket_multiple"):
        TrainInput(mode="reference", batch_size=1, bucket_multiple=0)
