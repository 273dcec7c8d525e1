"""Configs as files and as flags: the presets against REFERENCE.md, layering, one-line errors naming fields."""
from __future__ import annotations

import os
import shutil

import pytest

import fcn_jax

from fcn_jax import cli, configs
from fcn_jax.cli import train as train_cli
from fcn_jax.config import ModelConfig, TrainConfig, override, to_dict

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")
# train.py's flags before configs became files; every one must keep working.
FLAGS = ("--dataset", "--data-dir", "--init", "--steps", "--batch-size", "--grad-accum", "--mode", "--crop-size",
         "--preprocessing", "--loss", "--optimizer", "--lr", "--schedule", "--warmup-steps", "--momentum",
         "--weight-decay", "--seed", "--log-every", "--eval-every", "--eval-batch-size", "--checkpoint-every",
         "--keep-checkpoints", "--num-classes", "--width", "--dtype", "--padding", "--freeze-upsamplers",
         "--variant", "--preset", "--config", "--workdir", "--no-progress", "--coordinator-address",
         "--num-processes", "--process-id")


@pytest.mark.parametrize("variant", VARIANTS)
def test_reference_config_is_the_caffe_solver(variant):
    """REFERENCE.md, 'Training as in the reference'."""
    cfg = configs.get_config("reference", variant)
    lr = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10}[variant]
    steps = 300_000 if variant == "fcn8s-atonce" else 100_000
    assert (cfg.lr, cfg.steps, cfg.schedule, cfg.optimizer, cfg.momentum) == (lr, steps, "fixed", "sgd", 0.99)
    assert (cfg.weight_decay, cfg.bias_lr_mult, cfg.loss, cfg.batch_size, cfg.mode) == (5e-4, 2.0, "sum", 1, "reference")
    assert (cfg.dataset, cfg.preprocessing, cfg.flip) == ("voc_segmentation/sbd_fcn", "caffe", False)
    # every upsampler fixed; each image alone at its own size, drawn with replacement; exact-size validation
    assert (cfg.bucket_multiple, cfg.sampling, cfg.eval_bucket_multiple, cfg.seed) == (None, "replacement", None, 1337)
    assert cfg.model == ModelConfig(variant=variant, num_classes=21, width=1.0, padding="reference",
                                    dropout_rate=0.5, dtype="float32", freeze_upsamplers="all")


# The variants each reference solver exists for; the other presets take every variant.
SOLVER_VARIANTS = {
    "reference": VARIANTS, "reference_fixed": VARIANTS, "reference_alexnet": ("fcn-alexnet",),
    "reference_context": ("fcn32s", "fcn16s", "fcn8s"),
    "reference_siftflow": ("siftflow-fcn32s", "siftflow-fcn16s", "siftflow-fcn8s"),
    "reference_nyud": ("fcn32s", "nyud-fcn32s-color-d", "nyud-fcn32s-color-hha"),
    "torchvision": ("fcn-resnet50", "fcn-resnet101"),
    "shapes_bn": ("fcn-vgg11bn", "fcn-resnet50", "fcn-resnet101"),
}


def test_every_preset_builds_for_its_variants():
    for name in configs.PRESETS:
        assert os.path.isfile(configs.path(name))
        for variant in fcn_jax.models.VARIANTS:
            if variant in SOLVER_VARIANTS.get(name, fcn_jax.models.VARIANTS):
                cfg = configs.get_config(name, variant)
                assert isinstance(cfg, TrainConfig) and cfg.model.variant == variant and cfg.preset == name
            else:  # one line naming the preset's variants, not a KeyError
                with pytest.raises(ValueError, match=name.replace("reference_", "") if name != "reference_fixed"
                                   else "reference"):
                    configs.get_config(name, variant)
    shapes = configs.get_config("shapes", "fcn16s")  # the README's main job
    assert (shapes.model.width, shapes.model.padding, shapes.model.num_classes, shapes.dataset) == (
        0.125, "same", 7, "shapes")
    assert (shapes.steps, shapes.optimizer, shapes.lr, shapes.batch_size, shapes.crop_size) == (2500, "adamw", 1e-3, 8, 96)


def test_a_copied_config_file_is_a_config(tmp_path):
    mine = tmp_path / "my_config.py"
    text = open(configs.path("shapes")).read().replace("lr=1e-3", "lr=5e-4")
    assert "lr=5e-4" in text
    mine.write_text(text)
    args = train_cli.build_parser().parse_args(["--variant", "fcn8s", "--config", str(mine), "--steps", "7"])
    cfg = train_cli.build_config(args)
    assert (cfg.lr, cfg.steps, cfg.model.variant, cfg.model.width) == (5e-4, 7, "fcn8s", 0.125)


def test_layering_preset_then_json_then_flags(tmp_path):
    path = tmp_path / "fields.json"
    path.write_text('{"lr": 0.002, "steps": 9, "model": {"width": 0.5}, "scale_range": [0.9, 1.1]}')
    args = train_cli.build_parser().parse_args(["--preset", "modern", "--config", str(path), "--steps", "11",
                                                 "--no-flip", "--dropout-rate", "0.1"])
    cfg = train_cli.build_config(args)
    assert (cfg.lr, cfg.steps, cfg.flip, cfg.scale_range, cfg.preset) == (0.002, 11, False, (0.9, 1.1), "modern")
    assert (cfg.model.width, cfg.model.dropout_rate, cfg.model.dtype) == (0.5, 0.1, "bfloat16")


def test_optional_flags_can_be_set_to_none():
    args = train_cli.build_parser().parse_args(["--eval-bucket-multiple", "exact", "--bucket-multiple", "64"])
    cfg = train_cli.build_config(args)  # the shapes preset buckets its validation at 128
    assert (cfg.eval_bucket_multiple, cfg.bucket_multiple) == (None, 64)


def test_every_old_flag_still_exists():
    text = train_cli.build_parser().format_help()
    missing = [flag for flag in FLAGS if flag not in text]
    assert not missing


@pytest.mark.parametrize("fields, message", [
    ({"model": 5}, "model: expected a mapping"),
    ({"lr": "fast"}, "lr: expected float, got 'fast'"),
    ({"lr": float("nan")}, "lr: must be finite"),
    ({"lr": -1.0}, "lr must be >= 0"),
    ({"batch_size": 2.5}, "batch_size: expected int"),
    ({"model": {"width": 2}}, "width must be a number in (0, 1]"),
    ({"model.variant": "fcn7s"}, "unknown FCN variant 'fcn7s'"),
    ({"nope": 1}, "unknown TrainConfig fields: nope"),
    ({"mode": "fast"}, "mode='fast' is not one of"),
])
def test_bad_fields_are_named(fields, message):
    with pytest.raises(ValueError) as info:
        override(configs.get_config("shapes"), fields)
    assert message in str(info.value)


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": 5}')
    assert train_cli.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train.py: error: invalid configuration: model: expected a mapping of fields, got 5"]
    assert train_cli.main(["--config", str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such config file" in capsys.readouterr().err


def test_config_round_trips_through_json():
    cfg = configs.get_config("reference", "fcn8s", init="vgg16:weights.pth")
    assert cfg.init == "weights.pth"  # the prefixes of earlier versions are accepted and dropped
    assert override(TrainConfig(), to_dict(cfg)) == cfg


def test_console_scripts_name_each_tool():
    """pyproject's console scripts point at the tools' main functions, and each runs --help."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert set(scripts) == {"fcn-train", "fcn-eval", "fcn-predict", "fcn-benchmark", "fcn-convert", "fcn-score",
                            "fcn-dataset", "fcn-export"}
    import importlib
    for name, target in scripts.items():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        try:
            code = main(["--help"])
        except SystemExit as e:
            code = e.code
        assert code in (0, None), name
    installed = shutil.which("fcn-train")
    if installed:  # CI installs the package (pip install -e .): the real script must run too
        import subprocess
        proc = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "--variant" in proc.stdout


def test_shims_are_thin():
    for name in ("train.py", "eval.py", "predict.py", "benchmark.py"):
        lines = [line for line in open(os.path.join(ROOT, name)) if line.strip()]
        assert len(lines) <= 8 and any(f"from fcn_jax.cli.{name[:-3]} import main" in line for line in lines)
    assert cli.UsageError  # the shared plumbing stays importable


@pytest.mark.parametrize("body, expected", [
    ("def get_config(variant)\n    pass\n", "my.py:1: SyntaxError: expected ':'"),
    ("import os\n\ndef get_config(variant):\n    raise RuntimeError('no such preset here')\n",
     "my.py:4: RuntimeError: no such preset here (in get_config('fcn8s'))"),
    ("import os\nimport no_such_module_anywhere\n", "my.py:2: ModuleNotFoundError: No module named "
                                                   "'no_such_module_anywhere'"),
])
def test_a_broken_config_file_is_one_line_naming_file_and_line(tmp_path, capsys, monkeypatch, body, expected):
    """A syntax error, an exception in get_config, a failing import: one line with the file's line, exit 2,
    no workdir (issue 24, item 8)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.py").write_text(body)
    assert train_cli.main(["--variant", "fcn8s", "--config", "my.py", "--workdir", "run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: error: --config {expected}"]
    assert not (tmp_path / "run").exists()
