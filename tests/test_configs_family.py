"""The PASCAL-Context, SIFT Flow and NYUDv2 reference presets against the reference's solver files.

The expected numbers are written here from shelhamer/fcn.berkeleyvision.org's text (each block names its
file), not read from the presets' own tables.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

from fcn_jax import configs
from fcn_jax.config import ModelConfig, TrainConfig, override, to_dict
from fcn_jax.models import resolve_inputs
from fcn_jax.preprocess import CAFFE_MEANS, dataset_convention

# pascalcontext-fcn32s/solver.prototxt: base_lr: 1e-10; pascalcontext-fcn16s/solver.prototxt: base_lr: 1e-12;
# pascalcontext-fcn8s/solver.prototxt: base_lr: 1e-14. All three: lr_policy "fixed", momentum: 0.99,
# weight_decay: 0.0005, iter_size: 1, snapshot: 4000, display: 20, max_iter: 300000 (not what runs:)
# pascalcontext-fcn*s/solve.py: for _ in range(50): solver.step(8000) -> 400,000 steps, scoring every 8000.
CONTEXT = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14}
CONTEXT_SOLVER = dict(steps=50 * 8000, eval_every=8000, checkpoint_every=4000)
# siftflow-fcn32s/solver.prototxt: base_lr: 1e-10; siftflow-fcn16s/solver.prototxt: base_lr: 1e-12;
# siftflow-fcn8s/solver.prototxt: base_lr: 1e-12. All three: lr_policy "fixed", momentum: 0.99,
# weight_decay: 0.0005, iter_size: 1, display: 20, no snapshot line, max_iter: 300000 (not what runs:)
# siftflow-fcn*s/solve.py: for _ in range(50): solver.step(2000) -> 100,000 steps, scoring every 2000.
SIFTFLOW = {"siftflow-fcn32s": 1e-10, "siftflow-fcn16s": 1e-12, "siftflow-fcn8s": 1e-12}
SIFTFLOW_SOLVER = dict(steps=50 * 2000, eval_every=2000, checkpoint_every=2000)  # checkpoints: inferred
# nyud-fcn32s-color/solver.prototxt (= nyud-fcn32s-hha/solver.prototxt): base_lr: 1e-10;
# nyud-fcn32s-color-d/solver.prototxt: base_lr: 1e-10; nyud-fcn32s-color-hha/solver.prototxt: base_lr: 1e-12.
# All four: lr_policy "fixed", momentum: 0.99, weight_decay: 0.0005, iter_size: 1, snapshot: 2000, display: 20,
# max_iter: 300000 (not what runs:) nyud-fcn32s-*/solve.py: for _ in range(50): solver.step(2000).
NYUD = {"fcn32s": 1e-10, "nyud-fcn32s-color-d": 1e-10, "nyud-fcn32s-color-hha": 1e-12}
NYUD_SOLVER = dict(steps=50 * 2000, eval_every=2000, checkpoint_every=2000)
# nyud-fcn32s-*/net.py tops: ['color', 'label'], ['hha', 'label'], ['color', 'depth', 'label'], ['color', 'hha', 'label']
NYUD_INPUTS = {"fcn32s": "image", "nyud-fcn32s-color-d": "image+depth", "nyud-fcn32s-color-hha": "image+hha"}

# preset -> (lr per variant, solver steps / intervals, num_classes (net.py score_fr num_output), dataset,
#            preprocessing (the data layer's mean))
FAMILY = {
    "reference_context": (CONTEXT, CONTEXT_SOLVER, 60, "pascal_context/context59", "caffe-context"),
    "reference_siftflow": (SIFTFLOW, SIFTFLOW_SOLVER, 33, "sift_flow", "caffe-siftflow"),
    "reference_nyud": (NYUD, NYUD_SOLVER, 40, "nyud/trainval_test", "caffe-nyud"),
}
CASES = [(preset, variant) for preset, (lrs, *_) in FAMILY.items() for variant in lrs]
# the data layers' self.mean / mean_bgr: pascalcontext_layers.py, siftflow_layers.py, nyud_layers.py
MEANS = {"caffe-context": (104.007, 116.669, 122.679), "caffe-siftflow": (114.578, 115.294, 108.353),
         "caffe-nyud": (116.190, 97.203, 92.318)}


@pytest.mark.parametrize("preset,variant", CASES)
def test_preset_is_the_reference_solver(preset, variant):
    lrs, solver, num_classes, dataset, preprocessing = FAMILY[preset]
    cfg = configs.get_config(preset, variant)
    assert isinstance(cfg, TrainConfig) and cfg.preset == preset
    assert (cfg.lr, cfg.schedule, cfg.optimizer, cfg.momentum, cfg.weight_decay) == (
        lrs[variant], "fixed", "sgd", 0.99, 5e-4)
    assert (cfg.steps, cfg.eval_every, cfg.checkpoint_every, cfg.log_every) == (
        solver["steps"], solver["eval_every"], solver["checkpoint_every"], 20)
    # iter_size 1, one whole image per step; net.py: normalize false, biases lr_mult 2 / decay_mult 0
    assert (cfg.batch_size, cfg.grad_accum, cfg.loss, cfg.bias_lr_mult, cfg.warmup_steps) == (1, 1, "sum", 2.0, 0)
    assert (cfg.mode, cfg.flip, cfg.bucket_multiple, cfg.sampling, cfg.seed) == (
        "reference", False, None, "replacement", 1337)  # data layer seed=1337, random.randint draws
    assert (cfg.eval_batch_size, cfg.eval_bucket_multiple, cfg.class_weights, cfg.trainable, cfg.frozen) == (
        1, None, None, None, None)
    assert (cfg.dataset, cfg.preprocessing) == (dataset, preprocessing)
    assert CAFFE_MEANS[cfg.preprocessing] == MEANS[preprocessing]
    assert dataset_convention(cfg.dataset) == cfg.preprocessing
    # every Deconvolution lr_mult 0; drop6 / drop7 dropout_ratio 0.5; conv1_1 pad 100
    assert cfg.model == ModelConfig(variant=variant, num_classes=num_classes, width=1.0, padding="reference",
                                    dropout_rate=0.5, dtype="float32", freeze_upsamplers="all")
    expected_inputs = NYUD_INPUTS[variant] if preset == "reference_nyud" else "image"
    assert cfg.inputs == expected_inputs == resolve_inputs(cfg.inputs, variant)
    assert TrainConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}) == cfg  # validates
    assert configs.get_config(configs.path(preset), variant) == cfg  # the file, as a copy would be read
    assert override(cfg, to_dict(cfg)) == cfg


def test_nyud_hha_net_is_the_colour_solver_on_hha():
    colour = configs.get_config("reference_nyud", "fcn32s")
    hha = configs.get_config("reference_nyud", "fcn32s", inputs="hha")
    assert hha.inputs == "hha" and dataclasses.replace(hha, inputs="image") == colour
    with pytest.raises(ValueError, match="inputs"):  # 3 channels only for fcn32s
        configs.get_config("reference_nyud", "fcn32s", inputs="image+hha")


@pytest.mark.parametrize("preset,bad", [("reference_context", "fcn8s-atonce"),
                                        ("reference_context", "siftflow-fcn32s"),
                                        ("reference_siftflow", "fcn32s"),
                                        ("reference_nyud", "fcn16s"),
                                        ("reference_nyud", "nope")])
def test_other_variants_are_refused_in_one_line(preset, bad):
    with pytest.raises(ValueError) as e:
        configs.get_config(preset, bad)
    message = str(e.value)
    assert "\n" not in message and preset in message and repr(bad) in message
    assert all(v in message for v in FAMILY[preset][0])


def test_presets_are_listed():
    for preset in FAMILY:
        assert preset in configs.PRESETS and os.path.isfile(configs.path(preset))
        assert f"fcn_jax.configs.{preset}`" in configs.__doc__
