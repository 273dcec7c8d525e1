"""Multi-modal (NYUD colour / HHA / depth) and multi-task (SIFT Flow semantic + geometric) FCNs end to end.

Preprocessing against NumPy written from the reference's nyud_layers.py / siftflow_layers.py /
pascalcontext_layers.py; the composed 4- and 6-channel inputs; the pipeline carrying every field;
the two-head loss and per-head confusion matrices against NumPy; then a few steps of the real training
loop on tiny built SIFT Flow and NYUD datasets (the builders' own fake releases), eval.py on the results,
and predict refusing them. Networks are width 1/16 on images of about 20 x 20; the loops train the score
layers only, which keeps the compiled backward pass small.
"""
from __future__ import annotations

import json
import math
import os
import re
import tarfile
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcn_jax import data
from fcn_jax.config import ModelConfig, TrainConfig
from fcn_jax.data import nyud, pascal_context, sift_flow
from fcn_jax.data.pipeline import EvalBatch, TrainInput, eval_batches, read_fields, train_iterator
from fcn_jax.models import outputs as model_outputs
from fcn_jax.models import resolve_inputs
from fcn_jax.preprocess import (CAFFE_MEANS, CONVENTIONS, MEAN_HHA, MEAN_LOG_DEPTH, compose, convention_family,
                                deprocess, display_image, preprocess)

WIDTH = 1 / 16


# ------------------------------------------------------------------------------------------------
# The reference's data layers, written out in NumPy (HWC instead of their CHW transpose).

def layer_image(rgb: np.ndarray, mean_bgr) -> np.ndarray:
    """load_image of voc/siftflow/nyud/pascalcontext_layers.py."""
    in_ = np.array(rgb, dtype=np.float32)
    in_ = in_[:, :, ::-1]
    in_ -= np.array(mean_bgr, dtype=np.float32)
    return in_


def layer_hha(hha: np.ndarray) -> np.ndarray:
    """nyud_layers.load_hha."""
    out = np.array(hha, dtype=np.float32)
    out -= np.array((132.431, 94.076, 118.477), dtype=np.float32)
    return out


def layer_depth(depth: np.ndarray) -> np.ndarray:
    """nyud_layers.load_depth, channel last."""
    d = np.array(depth, dtype=np.float32)
    d = np.log(d)
    d -= np.array((7.844,), dtype=np.float32)
    return d[..., None]


def random_fields(h=9, w=11, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "hha": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "depth": rng.integers(400, 10000, (h, w)).astype(np.uint16)}


def test_dataset_means_are_the_reference_layers_and_the_builders():
    assert CAFFE_MEANS["caffe-siftflow"] == (114.578, 115.294, 108.353) == sift_flow.MEAN_BGR
    assert CAFFE_MEANS["caffe-nyud"] == (116.190, 97.203, 92.318) == nyud.MEAN_BGR
    assert CAFFE_MEANS["caffe-context"] == (104.007, 116.669, 122.679) == pascal_context.MEAN_BGR
    assert MEAN_HHA == nyud.MEAN_HHA and MEAN_LOG_DEPTH == nyud.MEAN_LOG_DEPTH
    assert {convention_family(c) for c in CONVENTIONS} == {"caffe", "torchvision"}


@pytest.mark.parametrize("convention", ["caffe", "caffe-context", "caffe-siftflow", "caffe-nyud"])
def test_colour_conventions_equal_the_data_layers(convention):
    image = random_fields()["image"]
    want = layer_image(image, CAFFE_MEANS[convention])
    np.testing.assert_array_equal(preprocess(image, convention), want)
    np.testing.assert_array_equal(np.asarray(jax.jit(preprocess, static_argnums=1)(image, convention)), want)
    np.testing.assert_array_equal(deprocess(want, convention), image)


def test_hha_depth_and_composed_inputs_equal_the_data_layers():
    f = random_fields()
    colour = layer_image(f["image"], nyud.MEAN_BGR)
    cases = {"image": colour, "hha": layer_hha(f["hha"]),
             "image+depth": np.concatenate([colour, layer_depth(f["depth"])], -1),  # Concat(color, depth)
             "image+hha": np.concatenate([colour, layer_hha(f["hha"])], -1)}
    for inputs, want in cases.items():
        got_np = compose(f, inputs, "caffe-nyud")
        got_jax = np.asarray(jax.jit(lambda x, i=inputs: compose(x, i, "caffe-nyud"))({k: jnp.asarray(v) for k, v in
                                                                                     f.items()}))
        assert got_np.shape == got_jax.shape == f["image"].shape[:2] + (want.shape[-1],), inputs
        np.testing.assert_allclose(got_np, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got_jax, want, rtol=1e-6, atol=1e-5)
    zero = compose({"image": f["image"][:1, :2], "depth": np.array([[0, 1000]], np.uint16)}, "image+depth", "caffe")
    assert zero[0, 0, 3] == 0 and zero[0, 1, 3] == pytest.approx(math.log(1000) - 7.844, rel=1e-6)  # 0: the mean
    np.testing.assert_array_equal(display_image(cases["image+hha"], "caffe-nyud", "image+hha"), f["image"])
    np.testing.assert_array_equal(display_image(cases["hha"], "caffe-nyud", "hha"), f["hha"])


def test_inputs_against_variants_and_heads_against_labels():
    assert resolve_inputs(None, "nyud-fcn32s-color-d") == "image+depth"
    assert resolve_inputs(None, "nyud-fcn32s-color-hha") == "image+hha"
    assert resolve_inputs("hha", "fcn32s") == "hha" and resolve_inputs(None, "siftflow-fcn16s") == "image"
    with pytest.raises(ValueError, match=r"^--inputs image\+hha makes 6 input channels but nyud-fcn32s-color-d "
                                         r"takes 4 .*use --inputs image\+depth$") as e:
        TrainConfig(model=ModelConfig("nyud-fcn32s-color-d", 40, WIDTH), inputs="image+hha")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="inputs='rgbd' is not one of"):
        TrainConfig(inputs="rgbd")
    described = lambda v, n: [(o.name, o.batch_key, o.label_field, o.classes, o.loss_weight, o.evaluated)  # noqa: E731
                              for o in model_outputs(v, n)]
    assert described("siftflow-fcn8s", 33) == [("sem", "label", "segmentation", 33, 1.0, True),
                                               ("geo", "label_geo", "geometric", 3, 1.0, True)]
    assert described("nyud-fcn32s-color-hha", 40) == [("out", "label", "segmentation", 40, 1.0, True)]


# ------------------------------------------------------------------------------------------------
# The pipeline carries every field.

def aligned_example(h=40, w=50, seed=0) -> dict:
    """hha == image, geometric == segmentation % 3, depth == 1000 + segmentation: any misalignment of the
    fields, or a wrong resampling (bilinear labels or depth), breaks these relations."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:h, :w]
    image = np.stack([4 * ys, 4 * xs, np.full_like(ys, 9)], -1).astype(np.uint8)
    seg = ((ys // 3 + xs // 4) % 30).astype(np.uint8)
    seg[rng.random((h, w)) < 0.1] = 255
    geo = np.where(seg == 255, 255, seg % 3).astype(np.uint8)
    return {"image": image, "hha": image.copy(), "depth": (1000 + seg.astype(np.uint16)), "segmentation": seg,
            "geometric": geo, "file_name": f"e{seed}"}


def test_modern_batches_crop_scale_and_flip_every_field_alike():
    source = [aligned_example(seed=i) for i in range(3)]
    labels = (("label", "segmentation"), ("label_geo", "geometric"))
    padded = 0
    for inputs in ("image+hha", "image+depth"):
        cfg = TrainInput(batch_size=2, crop_size=32, scale_range=(0.5, 1.5), seed=1, convention="caffe-nyud",
                         inputs=inputs, labels=labels)
        with train_iterator(source, cfg, num_threads=1) as it:
            for _ in range(4):
                b = {k: np.asarray(v) for k, v in next(it).items()}
                x, label, geo = b["image"], b["label"], b["label_geo"]
                assert x.shape == (2, 32, 32, 6 if inputs == "image+hha" else 4) and x.dtype == np.float32
                assert label.dtype == geo.dtype == np.int32
                np.testing.assert_array_equal(geo, np.where(label == 255, 255, label % 3))
                # padding (a crop is smaller than 32 where the scale is below 0.8): 0 in every input channel
                pad_rows, pad_cols = np.all(label == 255, axis=2), np.all(label == 255, axis=1)
                inside = ~pad_rows[:, :, None] & ~pad_cols[:, None, :]
                assert np.all(x[~inside] == 0)
                padded += int((~inside).sum())
                if inputs == "image+hha":  # bilinear on one grid: colour R (BGR channel 2) == HHA channel 0
                    np.testing.assert_allclose((x[..., 2] + nyud.MEAN_BGR[2])[inside],
                                               (x[..., 3] + MEAN_HHA[0])[inside], atol=1e-3)
                else:  # nearest depth on the labels' grid: log(1000 + label) where labelled
                    want = np.log(1000 + label.astype(np.float32)) - np.float32(7.844)
                    labelled = label != 255
                    np.testing.assert_allclose(x[..., 3][labelled], want[labelled], rtol=1e-5, atol=1e-5)
    assert padded > 0


def test_eval_batches_compose_and_pad_with_zero():
    source = [aligned_example(20, 24, 0), aligned_example(17, 30, 1), aligned_example(20, 24, 2)]
    batches = list(eval_batches(source, batch_size=2, convention="caffe-nyud", bucket_multiple=16, inputs="image+depth",
                                labels=(("label", "segmentation"), ("label_geo", "geometric")), num_threads=1))
    seen = 0
    for b in batches:
        x, sizes = np.asarray(b.image), b.sizes
        assert set(b.labels) == {"label", "label_geo"} and b.labels["label"] is b.label
        for row, index in enumerate(b.indices):
            if index < 0:
                assert np.all(x[row] == 0) and np.all(np.asarray(b.labels["label_geo"])[row] == 255)
                continue
            h, w = sizes[row]
            e = source[index]
            want = np.concatenate([layer_image(e["image"], nyud.MEAN_BGR), layer_depth(e["depth"])], -1)
            np.testing.assert_allclose(x[row, :h, :w], want, rtol=1e-5, atol=1e-5)
            assert np.all(x[row, h:] == 0) and np.all(x[row, :, w:] == 0)
            np.testing.assert_array_equal(np.asarray(b.labels["label_geo"])[row, :h, :w], e["geometric"])
            seen += 1
    assert seen == 3
    with pytest.raises(ValueError, match=r"examples have no 'hha' field .*inputs 'image\+hha' needs it"):
        read_fields({"image": source[0]["image"], "segmentation": source[0]["segmentation"]}, "image+hha")


# ------------------------------------------------------------------------------------------------
# Loss and metrics of two heads.

def numpy_ce_sum(logits: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Softmax cross-entropy summed over pixels whose label is a class (SoftmaxWithLoss, ignore 255)."""
    logits = logits.astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = labels < logits.shape[-1]
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return float(-(picked * valid).sum()), int(valid.sum())


def fast_hist(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """score.py's fast_hist."""
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


class TwoHeadPixelModel(nn.Module):
    """A per-pixel stand-in for a SIFT Flow FCN (its variant's heads: 'sem' 33 classes, 'geo' 3) that
    compiles in a moment: the loss and metric plumbing is what is tested; the FCN runs in the loops below."""

    variant: str = "siftflow-fcn32s"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        return {"sem": nn.Dense(33, name="score_sem")(x / 50), "geo": nn.Dense(3, name="score_geo")(x / 50)}


def two_head_batch(n=2, h=7, w=9, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    sem, geo = rng.integers(0, 33, (n, h, w)), rng.integers(0, 3, (n, h, w))
    sem[rng.random(sem.shape) < 0.2], geo[rng.random(geo.shape) < 0.3] = 255, 255
    return {"image": jnp.asarray(rng.standard_normal((n, h, w, 3)) * 40, jnp.float32),
            "label": jnp.asarray(sem, jnp.int32), "label_geo": jnp.asarray(geo, jnp.int32)}


@pytest.mark.parametrize("loss", ["sum", "mean"])
def test_two_head_loss_is_the_sum_of_each_heads_loss(loss):
    """siftflow-fcn*/net.py: SoftmaxWithLoss(score_sem, sem) + SoftmaxWithLoss(score_geo, geo), normalize false,
    ignore 255, loss weight 1 each; 'mean' divides each head's sum by its own labelled pixels. The functions
    train_step composes, run eagerly (the loops below run them inside the compiled step)."""
    from fcn_jax.train_lib import loss_scales, output_losses, total_loss
    outputs = model_outputs("siftflow-fcn32s", 33)
    batch = two_head_batch()
    model = TwoHeadPixelModel()
    params = model.init(jax.random.key(1), batch["image"])["params"]
    logits = model.apply({"params": params}, batch["image"])
    (ce_sem, n_sem), (ce_geo, n_geo) = (numpy_ce_sum(np.asarray(logits[h]), np.asarray(batch[k]))
                                        for h, k in (("sem", "label"), ("geo", "label_geo")))
    want = {"sum": ((ce_sem + ce_geo) / 2, ce_sem / 2, ce_geo / 2),  # Caffe normalize: false, / batch size
            "mean": (ce_sem / n_sem + ce_geo / n_geo, ce_sem / n_sem, ce_geo / n_geo)}[loss]
    labels = {k: batch[k] for k in ("label", "label_geo")}
    scales, counts = loss_scales(labels, outputs, loss, 2)
    totals = output_losses(logits, labels, outputs)
    got = (float(total_loss(totals, scales, outputs)), float(totals["sem"] * scales["sem"]),
           float(totals["geo"] * scales["geo"]))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert (float(counts["sem"]), float(counts["geo"])) == (n_sem, n_geo)


def test_per_head_confusion_matrices_equal_fast_hist():
    from fcn_jax.evaluate import evaluate
    model = TwoHeadPixelModel()
    params = model.init(jax.random.key(2), jnp.zeros((1, 7, 9, 3)))["params"]
    batches = []
    for i in range(3):
        b = two_head_batch(n=1, seed=10 + i)
        batches.append(EvalBatch(image=b["image"], label=b["label"], sizes=np.array([[7, 9]], np.int32),
                                 names=[f"i{i}"], indices=np.array([i]),
                                 labels={k: b[k] for k in ("label", "label_geo")}))
    result = evaluate(model, params, batches, 33, progress=False)
    for head, key, n in (("sem", "label", 33), ("geo", "label_geo", 3)):
        want = sum(fast_hist(np.asarray(b.labels[key]).ravel(),
                             np.asarray(model.apply({"params": params}, b.image)[head]).argmax(-1).ravel(), n)
                   for b in batches)
        np.testing.assert_array_equal(result.heads[head].hist, want)
    assert result.hist is result.heads["sem"].hist and result.num_images == 3
    sem = result.heads["sem"].scores
    gt = result.hist.sum(1) > 0
    assert not gt.all() and sem["mean_iu_present"] == pytest.approx(np.mean(sem["iu"][gt]))
    assert sem["mean_iu"] == pytest.approx(np.nanmean(sem["iu"]))


# ------------------------------------------------------------------------------------------------
# The training loop, eval.py and predict.py on tiny built datasets.

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Tiny sift_flow (4 train / 3 test, 18x22) and nyud (5 / 3, 14x19) built by their builders from the
    fakes of tests/test_data_siftflow.py and tests/test_data_nyud.py, in one data directory."""
    import test_data_nyud
    import test_data_siftflow
    work = tmp_path_factory.mktemp("multimodal")
    manual = {name: work / name / "manual" for name in ("sift_flow", "nyud")}  # apart: both have trainval.txt
    test_data_siftflow.write_tree(work / "tree" / "SiftFlowDataset", test_data_siftflow.TRAIN, test_data_siftflow.TEST,
                                  lists_in=manual["sift_flow"])
    with zipfile.ZipFile(manual["sift_flow"] / "SiftFlowDataset.zip", "w") as zf:
        for path in sorted((work / "tree").rglob("*")):
            zf.write(path, path.relative_to(work / "tree").as_posix())
    test_data_nyud.write_tree(work / "nyud_tree" / "nyud")
    manual["nyud"].mkdir(parents=True)
    with tarfile.open(manual["nyud"] / "nyud.tar.gz", "w:gz") as tar:
        tar.add(work / "nyud_tree" / "nyud", arcname="nyud")
    for name in ("sift_flow", "nyud"):
        data.prepare(name, data_dir=work / "tfds", manual_dir=manual[name], verify_split_sizes=False)
    return str(work / "tfds")


def loop_config(variant: str, num_classes: int, dataset: str, data_dir: str, convention: str) -> TrainConfig:
    """The reference's protocol (whole images at batch 1, summed loss, SGD 0.99) for 2 steps, score layers only
    ('same' padding: a smaller program; the plumbing is what is tested)."""
    return TrainConfig(model=ModelConfig(variant, num_classes, WIDTH, padding="same", dropout_rate=0.0,
                                         freeze_upsamplers="all"), dataset=dataset,
                       data_dir=data_dir, mode="reference", batch_size=1, sampling="replacement",
                       preprocessing=convention, loss="sum", lr=1e-10, schedule="fixed", momentum=0.99, steps=2,
                       trainable="score_.*", log_every=1, eval_every=2, eval_batch_size=1, checkpoint_every=2)


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_siftflow_trains_validates_and_evaluates_both_heads(built, tmp_path, capsys):
    from fcn_jax.cli import eval as eval_cli
    from fcn_jax.train_lib import train_and_evaluate
    cfg = loop_config("siftflow-fcn32s", 33, "sift_flow", built, "caffe-siftflow")
    workdir = str(tmp_path / "run")
    logs: list[str] = []
    summary = train_and_evaluate(cfg, workdir, progress=False, log=logs.append)
    assert summary["step"] == 2 and not summary["interrupted"]
    assert {"mean_iu", "sem/mean_iu", "geo/mean_iu", "sem/mean_iu_present"} <= set(summary["scores"])
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    keys = set().union(*records)
    assert {"train/loss", "train/loss/sem", "train/loss/geo", "val/sem/mean_iu", "val/geo/mean_iu",
            "val/sem/pixel_acc", "val/geo/fw_iu", "val/sem/mean_iu_present"} <= keys
    assert "val/mean_iu" not in keys and any(k.startswith("val/iu/geo/") for k in keys)
    assert any("validation sem: " in line and "; geo: " in line for line in logs)
    for r in records:
        if "train/loss/sem" in r:  # the compiled step's loss is the sum of its heads'
            assert r["train/loss"] == pytest.approx(r["train/loss/sem"] + r["train/loss/geo"], rel=1e-5)
            assert r["train/loss/sem"] > 0 and r["train/loss/geo"] > 0
    val = [r for r in records if "val/geo/mean_iu" in r][-1]
    assert summary["scores"]["geo/mean_iu"] == val["val/geo/mean_iu"]
    assert summary["scores"]["mean_iu"] == val["val/sem/mean_iu"]

    out = str(tmp_path / "eval.json")
    assert eval_cli.main(["--ckpt", workdir, "--json", out, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "sem head (33 classes" in printed and "geo head (3 classes" in printed and "horizontal" in printed
    assert printed.count("mean IU, classes in ground truth") == 2
    record = json.load(open(out))
    assert (record["dataset"], record["preprocessing"], record["num_images"]) == ("sift_flow", "caffe-siftflow", 3)
    assert set(record["heads"]) == {"sem", "geo"} and list(record["heads"]["geo"]["per_class_iu"]) == list(
        sift_flow.GEOMETRIC_CLASSES)
    for head in ("sem", "geo"):  # the same weights, data and metrics as the loop's last validation
        assert record["heads"][head]["mean_iu"] == pytest.approx(val[f"val/{head}/mean_iu"], abs=1e-12)
    assert record["mean_iu"] == record["heads"]["sem"]["mean_iu"]

    # predict / Inference: RGB single-head models only, a one-line refusal naming the variant
    image = tmp_path / "a.png"
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    from fcn_jax.cli import predict
    assert predict.main([str(image), "--ckpt", workdir, "--out", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "siftflow-fcn32s has 2 output heads" in err and "eval.py" in err


def test_nyud_color_hha_trains_and_evaluates(built, tmp_path, capsys):
    from fcn_jax.cli import eval as eval_cli
    from fcn_jax.models import require
    from fcn_jax.train_lib import train_and_evaluate
    cfg = loop_config("nyud-fcn32s-color-hha", 40, "nyud", built, "caffe-nyud")
    workdir = str(tmp_path / "run")
    capsys.readouterr()
    summary = train_and_evaluate(cfg, workdir, progress=True, log=lambda _: None)
    assert summary["step"] == 2 and math.isfinite(summary["scores"]["mean_iu"])
    bars = capsys.readouterr().err  # the training bar, and validation's own bar in images/s (issue 12)
    assert re.search(r"2/2 \[[^]]*step", bars)
    assert re.search(r"validation \(step 2\): +\d+%\|[^|]*\| [12]/3 \[[^]]*(img/s|s/img)", bars)
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert any("val/mean_iu" in r for r in records) and not any("val/sem/mean_iu" in r for r in records)
    out = str(tmp_path / "eval.json")
    assert eval_cli.main(["--ckpt", workdir, "--json", out, "--no-progress"]) == 0
    record = json.load(open(out))
    assert (record["inputs"], record["preprocessing"], record["num_images"]) == ("image+hha", "caffe-nyud", 3)
    assert "heads" not in record and record["mean_iu"] == pytest.approx(summary["scores"]["mean_iu"], abs=1e-12)
    capsys.readouterr()
    assert eval_cli.main(["--ckpt", workdir, "--inputs", "image+depth", "--json", out, "--no-progress"]) == 2
    assert "--inputs image+depth makes 4 input channels but nyud-fcn32s-color-hha takes 6" in capsys.readouterr().err
    with pytest.raises(ValueError, match="nyud-fcn32s-color-hha takes BGR image"):
        require(cfg.model.variant, rgb=True, single_output=True, tool="Inference / predict.py")


def test_a_weights_file_without_a_convention_takes_the_datasets_mean():
    from fcn_jax.evaluator import eval_convention
    from fcn_jax.loading import ModelInfo
    config = ModelConfig("siftflow-fcn32s", 33, WIDTH)

    def info(fmt, how, convention="caffe"):
        return ModelInfo(config=config, class_names=sift_flow.SIFT_FLOW_CLASSES, preprocessing=convention, step=None,
                         source="x", meta={"format": fmt, "preprocessing_from": how})

    caffemodel = info("fcn", "Caffe model (BGR, mean-subtracted input)")
    assert eval_convention(caffemodel, "sift_flow", None)[0] == "caffe-siftflow"
    assert eval_convention(caffemodel, "nyud/trainval_test", None)[0] == "caffe-nyud"
    assert eval_convention(caffemodel, "sift_flow", "caffe") == ("caffe", "--preprocessing")
    assert eval_convention(info("checkpoint", None), "sift_flow", None)[0] == "caffe"  # a run's own record
    assert eval_convention(info("fcn", "file metadata"), "sift_flow", None)[0] == "caffe"
    assert eval_convention(info("vgg16-torch", "file name", "torchvision"), "sift_flow", None)[0] == "torchvision"
