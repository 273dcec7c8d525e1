"""fcn-jax: Fully Convolutional Networks for semantic segmentation in JAX/Flax.

Public API::

    model = fcn_jax.create_model("fcn8s", num_classes=21)
    variables = fcn_jax.load_weights("fcn8s_from_caffe.pth", variant="fcn8s")
    logits = model.apply(variables, fcn_jax.preprocess(images_uint8_rgb, "caffe"))  # (N, H, W, 21)
"""
from __future__ import annotations

from typing import Any

from fcn_jax.config import DTYPES, ModelConfig
from fcn_jax.models import FCN, VARIANTS
from fcn_jax.preprocess import deprocess, preprocess

__version__ = "0.1.0"


def create_model(variant: str = "fcn32s", num_classes: int = 21, **options: Any) -> FCN:
    """Returns the FCN linen module. ``options``: width, padding, dropout_rate, dtype ('float32' |
    'bfloat16' or a jnp dtype)."""
    dtype = options.get("dtype")
    if isinstance(dtype, str):
        options["dtype"] = DTYPES[ModelConfig(dtype=dtype).dtype]
    return FCN(variant=variant, num_classes=num_classes, **options)


def load_weights(path: str, variant: str | None = None, num_classes: int | None = None, **kwargs: Any):
    """Flax variables ``{'params': ...}`` from any supported weights file or checkpoint directory.

    See :func:`fcn_jax.weights.load_weights` for the formats and arguments.
    """
    from fcn_jax.weights import load_weights as _load
    return _load(path, variant=variant, num_classes=num_classes, **kwargs)


__all__ = ["FCN", "ModelConfig", "VARIANTS", "create_model", "deprocess", "load_weights", "preprocess"]
