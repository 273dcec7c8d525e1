"""fcn-jax: Fully Convolutional Networks for semantic segmentation in JAX/Flax.

Public API::

    model, variables, info = fcn_jax.load_model("runs/fcn16s")          # any checkpoint or weights file
    logits = model.apply(variables, fcn_jax.preprocess(images, info.preprocessing))  # (N, H, W, C)
    labels = fcn_jax.predict("runs/fcn16s", image)                       # (H, W) int32, full resolution

    model = fcn_jax.create_model("fcn8s", num_classes=21)               # a fresh flax.linen Module
"""
from __future__ import annotations

import os
from typing import Any

from fcn_jax.config import DTYPES, ModelConfig
from fcn_jax.deploy import export_model
from fcn_jax.inference import Inference, predict
from fcn_jax.models import FCN, VARIANTS
from fcn_jax.preprocess import deprocess, preprocess

__version__ = "0.1.0"


def create_model(variant: str = "fcn32s", num_classes: int = 21, **options: Any) -> FCN:
    """The FCN linen module. ``options``: width, padding, dropout_rate, dtype ('float32' | 'bfloat16' or a
    jnp dtype), frozen_bn (BatchNorm networks: running statistics used and never updated). Validated at once (unknown variant or padding, num_classes < 1, width outside (0, 1])."""
    dtype = options.pop("dtype", "float32")
    names = {v: k for k, v in DTYPES.items()}
    config = ModelConfig(variant=variant, num_classes=num_classes,
                         dtype=dtype if isinstance(dtype, str) else names.get(dtype, str(dtype)), **options)
    return config.build()


def load_model(path: str | os.PathLike, step: str | int = "best", *, dtype: str | None = None,
               **expected: Any) -> tuple[FCN, dict[str, Any], Any]:
    """``model, variables, info = load_model(path)``: a ready model from any supported path.

    ``path``: a training workdir (``step`` 'best', 'latest' or a number), a converted model checkpoint,
    or a weights file (pytorch-fcn FCN state dicts; VGG16 files need ``variant=``). ``model`` is the
    linen module exactly as trained (variant, classes, width, padding, dtype; ``dtype`` may override
    the compute dtype), ``variables`` every collection (``{'params': ...}``, plus e.g. ``'batch_stats'``) and ``info`` a
    :class:`fcn_jax.loading.ModelInfo` (``class_names``, ``preprocessing``, ``step``, ``config``,
    ``meta``). ``expected``: variant / num_classes / width / convention the source must match.
    """
    from fcn_jax.loading import load
    variables, info = load(path, step=step, dtype=dtype, **expected)
    return info.config.build(), variables, info


def load_weights(path: str | os.PathLike, variant: str | None = None, num_classes: int | None = None, *,
                 width: float | None = None, convention: str | None = None, step: str | int = "best",
                 return_meta: bool = False) -> Any:
    """Flax variables (every collection: ``{'params': ...}``, plus e.g. ``'batch_stats'``) from any path :func:`load_model` takes (and ``meta``, the recorded
    facts, with ``return_meta``). ``variant`` / ``num_classes`` / ``width`` / ``convention`` must agree
    with what the source records and fill in what it does not (VGG16 files: the head to build)."""
    from fcn_jax.loading import load
    variables, info = load(path, step=step, variant=variant, num_classes=num_classes, width=width,
                           convention=convention)
    return (variables, dict(info.meta)) if return_meta else variables


__all__ = ["FCN", "Inference", "ModelConfig", "VARIANTS", "create_model", "deprocess", "export_model", "load_model",
           "load_weights", "predict", "preprocess"]
