"""Shared by the export tests (tests/test_export.py, tests/test_onnx.py): random variables of every collection,
a saved checkpoint of them, and the reference logits ``model.apply`` gives."""
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fcn_jax import benchmark as bench
from fcn_jax import checkpoint
from fcn_jax.config import ModelConfig
from fcn_jax.inference import forward
from fcn_jax.models.registry import main_output

CLASSES = ("background", "disc", "square", "triangle")


def random_variables(config: ModelConfig, seed: int = 0) -> dict:
    """Every collection of ``config``'s network, random: He-scaled kernels, biases and BatchNorm means in
    [-0.3, 0.3], scales and variances in [0.5, 2]."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(bench.synthetic_variables(config))
    return traverse_util.unflatten_dict({k: (rng.uniform(0.5, 2.0, v.shape) if k[-1] in ("scale", "var") else
                                             rng.uniform(-0.3, 0.3, v.shape) if v.ndim == 1 else v).astype(np.float32)
                                         for k, v in flat.items()})


def saved(tmp_path_factory, config: ModelConfig, convention: str) -> tuple[str, dict]:
    """A model checkpoint of random variables of ``config`` (:func:`random_variables`): (path, variables)."""
    path = str(tmp_path_factory.mktemp("ckpt") / config.variant)
    variables = random_variables(config)
    checkpoint.save_model(path, variables, checkpoint.model_meta(config, CLASSES, convention, source="test"))
    return path, variables


def reference(config: ModelConfig, variables: dict, x: np.ndarray) -> np.ndarray:
    """``model.apply``'s logits of the main output (B, H, W, classes)."""
    name = main_output(config.variant, config.num_classes).name
    return np.asarray(forward(config.build(), variables, jnp.asarray(x))[name])


def assert_close(got, want):
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
