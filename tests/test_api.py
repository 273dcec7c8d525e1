"""The public API: the README's snippet runs as written, load_model on every kind of path, eager validation."""
from __future__ import annotations

import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fcn_jax
from fcn_jax import checkpoint
from fcn_jax.config import ModelConfig
from fcn_jax.inference import load_image
from source_layouts import source_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("background", "circle", "square", "triangle", "star", "bar", "ring")
CONFIG = ModelConfig(variant="fcn16s", num_classes=len(CLASSES), width=1 / 16, padding="same", dropout_rate=0.0)


def random_params(config: ModelConfig, seed: int = 0):
    """Every layer random (score layers start at zero, which would make every prediction class 0)."""
    model = config.build()
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))["params"]
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir as train.py leaves it (``best/`` at step 40, ``checkpoints/`` empty)."""
    root = tmp_path_factory.mktemp("api")
    params = random_params(CONFIG)
    meta = checkpoint.model_meta(CONFIG, CLASSES, "torchvision", config={"dataset": "shapes"})
    saver = checkpoint.TrainCheckpointer(str(root / "runs" / "fcn16s"))
    assert saver.save_best(40, params, meta, {"mean_iu": 0.5})
    saver.close()
    shutil.copytree(os.path.join(ROOT, "docs", "examples"), root / "docs" / "examples")
    return root, params


def readme_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_as_written(workdir, monkeypatch):
    root, params = workdir
    monkeypatch.chdir(root)
    image = load_image(root / "docs" / "examples" / "shapes_0.png")
    namespace = {"images_uint8_rgb": image[None], "image_uint8_rgb": image}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)
    info, logits, labels = namespace["info"], namespace["logits"], namespace["labels"]
    assert info.class_names == CLASSES and info.step == 40 and info.preprocessing == "torchvision"
    assert logits.shape == (1, *image.shape[:2], len(CLASSES)) and labels.shape == image.shape[:2]
    # independently: the network applied by hand to the image, preprocessed by hand (torchvision convention)
    x = (image / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    expected = np.argmax(np.asarray(CONFIG.build().apply({"params": params}, jnp.asarray(x[None], jnp.float32)))[0], -1)
    np.testing.assert_array_equal(labels, expected)
    assert len(np.unique(expected)) > 1  # a test of something: random weights predict several classes
    label, probs = namespace["label"], namespace["probs"]
    assert label.shape == image.shape[:2] and probs.shape == (*image.shape[:2], len(CLASSES))
    np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-5)
    assert isinstance(namespace["model"], fcn_jax.FCN) and namespace["model"].variant == "fcn8s"


def test_load_model_from_each_kind_of_path(workdir, tmp_path):
    root, params = workdir
    model, variables, info = fcn_jax.load_model(root / "runs" / "fcn16s")  # training workdir
    assert (model.variant, model.num_classes, model.width, model.padding) == ("fcn16s", 7, 1 / 16, "same")
    jax.tree.map(np.testing.assert_array_equal, variables["params"], params)
    converted = str(tmp_path / "converted")
    checkpoint.save_model(converted, {"params": params}, checkpoint.model_meta(CONFIG, CLASSES, "caffe"), step=7)
    model, variables, info = fcn_jax.load_model(converted)  # converted model checkpoint
    assert model.variant == "fcn16s" and info.step == 7 and info.preprocessing == "caffe"
    rng = np.random.default_rng(1)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in source_layout("fcn", "fcn8s", 21, 1 / 16).items()}
    np.savez(tmp_path / "fcn8s_from_caffe.npz", **tensors)
    model, variables, info = fcn_jax.load_model(tmp_path / "fcn8s_from_caffe.npz", width=1 / 16)  # weights file
    assert (model.variant, model.num_classes, model.padding) == ("fcn8s", 21, "reference")
    assert info.step is None and info.preprocessing == "caffe" and info.class_names[15] == "person"
    np.testing.assert_array_equal(variables["params"]["score_fr"]["bias"], tensors["score_fr.bias"])
    model, _, info = fcn_jax.load_model(root / "runs" / "fcn16s", dtype="bfloat16")
    assert model.dtype == jnp.bfloat16 and info.config.dtype == "bfloat16"


@pytest.mark.parametrize("args, message", [
    (("fcn7s",), "unknown FCN variant 'fcn7s'"),
    (("fcn8s", 0), "num_classes"),
    (("fcn8s", 21), "width"),
    (("fcn8s", 21), "padding"),
])
def test_create_model_validates_at_once(args, message):
    options = {"width": {"width": 2.0}, "padding": {"padding": "valid"}}.get(message, {})
    with pytest.raises(ValueError, match=message):
        fcn_jax.create_model(*args, **options)


def test_preprocess_refuses_images_scaled_to_0_1():
    image = np.random.default_rng(0).random((5, 4, 3))
    with pytest.raises(ValueError, match="looks like 0..1: multiply by 255"):
        fcn_jax.preprocess(image, "caffe")
    x = fcn_jax.preprocess((image * 255).astype(np.uint8), "caffe")  # the same image, 0..255: fine
    assert x.shape == (5, 4, 3) and x.dtype == np.float32
