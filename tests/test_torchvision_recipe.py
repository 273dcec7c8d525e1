"""torchvision's FCN recipe as fcn-jax config fields, each against torchvision or PyTorch itself.

- ``resize_base``: the random resize of references/segmentation (``RandomResize(260, 1040)``: a shorter side
  drawn as a whole number of pixels, the longer one from ``F.resize``) gives torchvision's output sizes;
- ``lr_mults`` / ``decay_biases`` / ``bias_lr_mult``: parameters after steps equal ``torch.optim.SGD`` with
  torchvision's parameter groups (the aux head at 10x lr, weight decay on everything) under its poly
  ``LambdaLR``, and with Caffe's (biases at 2x lr without decay);
- ``aux_loss_weight``: the auxiliary head's share of the loss; the presets ``torchvision`` and ``shapes_bn``.
"""
from __future__ import annotations

import os

import jax
import numpy as np
import optax
import pytest
import torch
from flax import traverse_util
from PIL import Image

from fcn_jax import configs, train_lib
from fcn_jax.cli import train as train_cli
from fcn_jax.config import override, parse_lr_mults
from fcn_jax.data import pipeline
from test_bn_fcns import tv  # noqa: E402


__all__ = ["tv"]  # test_bn_fcns' torchvision fixture (its CPU-torch import workaround), used here


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (281, 281), (97, 1000)])
def test_resize_base_gives_torchvisions_random_resize_sizes(tv, height, width):
    cfg = pipeline.TrainInput(resize_base=520, scale_range=(0.5, 2.0), crop_size=480)
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = pipeline._scaled_size(height, width, rng, cfg)
        short = min(h, w)
        assert 260 <= short <= 1040
        resized = tv.transforms.functional.resize(Image.new("RGB", (width, height)), short)  # references/segmentation's call
        assert resized.size == (w, h)


def test_resize_base_draws_every_whole_shorter_side_in_range():
    cfg = pipeline.TrainInput(resize_base=10, scale_range=(0.5, 2.0))
    rng = np.random.default_rng(1)
    shorts = {min(pipeline._scaled_size(40, 60, rng, cfg)) for _ in range(600)}
    assert shorts == set(range(5, 21))  # random.randint(5, 20): both ends included


def test_resize_base_crops_the_resized_image():
    cfg = pipeline.TrainInput(resize_base=16, scale_range=(1.0, 1.0), crop_size=64, flip=False)
    label = np.repeat(np.arange(8, dtype=np.uint8)[None, :], 4, axis=0)  # 4 x 8: shorter side 4 -> 16
    image = np.stack([label * 30] * 3, axis=-1)
    out = pipeline.augment_fields({"image": image, "label": label}, np.random.default_rng(0), cfg)
    assert out["label"].shape == (16, 32) and out["image"].shape == (16, 32, 3)
    np.testing.assert_array_equal(out["label"][0], np.repeat(np.arange(8), 4))  # nearest: each column x4


# A parameter tree with torchvision FCN-ResNet paths (names as fcn-jax's layers have them).
SHAPES = {"backbone/conv1/kernel": (3, 3, 3, 4), "backbone/bn1/scale": (4,), "backbone/bn1/bias": (4,),
          "classifier/conv/kernel": (3, 3, 4, 2), "classifier/bn/scale": (2,), "classifier/bn/bias": (2,),
          "classifier/score/kernel": (1, 1, 2, 3), "classifier/score/bias": (3,),
          "aux_classifier/conv/kernel": (3, 3, 4, 2), "aux_classifier/bn/scale": (2,),
          "aux_classifier/score/kernel": (1, 1, 2, 3), "aux_classifier/score/bias": (3,)}
STEPS = 6


def _run_both(cfg, groups):
    """(fcn-jax's params, torch's) after STEPS steps of the same random gradients; ``groups(name)`` gives a
    parameter's torch group options."""
    rng = np.random.default_rng(0)
    flat = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(STEPS)]
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    tx = train_lib.make_optimizer(cfg, params)
    state = tx.init(params)
    for g in grads:
        g = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in g.items()})
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    ours = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}

    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in flat.items()}
    by_options: dict = {}
    for k in SHAPES:
        by_options.setdefault(tuple(sorted(groups(k).items())), []).append(tensors[k])
    opt = torch.optim.SGD([{"params": ps, **dict(o)} for o, ps in by_options.items()], lr=cfg.lr,
                          momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    poly = torch.optim.lr_scheduler.LambdaLR(opt, lambda x: (1 - x / cfg.steps) ** 0.9)  # torchvision's
    for g in grads:
        for k, t in tensors.items():
            t.grad = torch.tensor(g[k])
        opt.step()
        poly.step()
    return ours, {k: t.detach().numpy() for k, t in tensors.items()}


def test_torchvision_parameter_groups_are_torch_sgd():
    cfg = configs.get_config("torchvision", "fcn-resnet50", steps=STEPS)
    assert (cfg.lr_mults, cfg.decay_biases, cfg.bias_lr_mult) == ("aux_classifier/.*=10", True, 1.0)
    aux = lambda k: {"lr": cfg.lr * 10} if k.startswith("aux_classifier/") else {}  # noqa: E731 (train.py's groups)
    ours, theirs = _run_both(cfg, aux)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)
    moved = {k: np.abs(ours[k] - v).max() for k, v in _run_both(override(cfg, {"lr_mults": None}), aux)[0].items()}
    assert moved["aux_classifier/score/kernel"] > 1e-3 and moved["backbone/conv1/kernel"] < 1e-6  # 10x is the aux's


def test_caffe_groups_are_torch_sgd_with_bias_groups():
    cfg = configs.get_config("shapes_bn", "fcn-resnet50", steps=STEPS, decay_biases=False, bias_lr_mult=2.0,
                             lr_mults="classifier/score/.*=0.5")

    def groups(k):
        mult = 0.5 if k.startswith("classifier/score/") else 1.0
        if k.endswith("/bias"):
            return {"lr": cfg.lr * 2 * mult, "weight_decay": 0.0}
        return {"lr": cfg.lr * mult}
    ours, theirs = _run_both(cfg, groups)
    for k in SHAPES:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_default_labels_keep_the_optimizer_state_of_earlier_checkpoints():
    cfg = configs.get_config("shapes", "fcn8s")
    params = traverse_util.unflatten_dict({tuple(k.split("/")): np.zeros(s, np.float32) for k, s in SHAPES.items()})
    state = train_lib.make_optimizer(cfg, params).init(params)
    assert sorted(state.inner_states) == ["bias", "frozen", "weight"]  # what checkpoints before lr_mults hold


@pytest.mark.parametrize("text, message", [
    ("aux_classifier/.*", "expected REGEX=MULT pairs"),
    ("aux_(=10", "is not a regular expression"),
    ("aux=fast", "'fast' in 'aux=fast' is not a number"),
    ("aux=-1", "finite and >= 0"),
])
def test_bad_lr_mults_are_named(text, message):
    with pytest.raises(ValueError, match="lr_mults") as info:
        configs.get_config("shapes_bn", "fcn-resnet50", lr_mults=text)
    assert message in str(info.value)


def test_lr_mults_parse_in_order():
    assert parse_lr_mults("aux_classifier/.*=10, classifier/score/.*=0.5") == (
        ("aux_classifier/.*", 10.0), ("classifier/score/.*", 0.5))
    assert parse_lr_mults(None) == ()


def test_lr_mults_matching_nothing_is_one_line_before_the_workdir(tmp_path, capsys):
    """Refused before anything is created: neither the workdir nor the dataset (it used to be built first,
    printing its 'building shapes/...' line, in a data directory of its own here)."""
    workdir, data_dir = tmp_path / "run", tmp_path / "tfds"
    code = train_cli.main(["--preset", "shapes_bn", "--variant", "fcn-resnet50", "--lr-mults", "head/.*=10",
                           "--workdir", str(workdir), "--data-dir", str(data_dir), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--lr-mults 'head/.*' matches no parameter" in err[0], err
    assert not os.path.exists(workdir) and not os.path.exists(data_dir)


def test_aux_loss_weight_scales_the_aux_share_of_the_loss():
    base = configs.get_config("shapes_bn", "fcn-resnet50", model={"width": 0.0625})
    weights = {o.name: o.loss_weight for o in train_lib.batch_spec(base)[1]}
    assert weights == {"out": 1.0, "aux": 0.5}
    cfg = override(base, {"aux_loss_weight": 0.2})
    assert {o.name: o.loss_weight for o in train_lib.batch_spec(cfg)[1]} == {"out": 1.0, "aux": 0.2}
    with pytest.raises(ValueError, match="aux_loss_weight: fcn8s has no auxiliary output"):
        configs.get_config("shapes", "fcn8s", aux_loss_weight=0.5)
    with pytest.raises(ValueError, match="aux_loss_weight must be >= 0"):
        override(base, {"aux_loss_weight": -1.0})


def test_torchvision_preset_is_the_recipe():
    cfg = configs.get_config("torchvision", "fcn-resnet101")
    assert (cfg.batch_size, cfg.crop_size, cfg.resize_base, cfg.scale_range, cfg.flip) == (32, 480, 520, (0.5, 2.0), True)
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.schedule, cfg.warmup_steps) == (
        "sgd", 0.02, 0.9, 1e-4, "poly", 0)
    assert (cfg.loss, cfg.aux_loss_weight, cfg.preprocessing, cfg.model.frozen_bn) == ("mean", 0.5, "torchvision", False)
    assert cfg.steps == 30 * (10_582 // 32) and cfg.model.num_classes == 21
    with pytest.raises(ValueError, match="torchvision preset is torchvision's FCN-ResNet recipe"):
        configs.get_config("torchvision", "fcn-vgg11bn")
    assert configs.get_config("shapes_bn", "fcn-vgg11bn").lr_mults is None  # no aux head: no aux multiplier
