"""The FCN model: a backbone (``backbones.BACKBONES``) plus the skip head of a variant (``registry``).

Parameter tree (names as in pytorch-fcn's state dicts, so foreign weights map by name)::

    backbone/{conv1_1 .. conv5_3, fc6, fc7}/{kernel (HWIO), bias}
    score_fr, score_pool4, score_pool3 /{kernel, bias}        1x1 convs, zero-initialised
    upscore | upscore2, upscore16 | upscore2, upscore_pool4, upscore8 /{kernel}  bilinear transposed convs
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.backbones import get_backbone
from fcn_jax.models.heads import SkipHead
from fcn_jax.models.registry import get_variant, validate

# Dummy NHWC input to initialise (or ``jax.eval_shape``) any FCN; a multiple of 32 suits both paddings.
INIT_SHAPE: tuple[int, int, int, int] = (1, 32, 32, 3)
# XLA:CPU spends about 25 s optimising the ~40 random-number kernels of an FCN's initialisation (each
# threefry + truncated-normal kernel takes about a second); without LLVM's optimisations the same program
# compiles in about 3 s and runs once. Values may differ from a fully optimised compile in the last bit.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def initial_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
    """``model.init(rng, zeros(INIT_SHAPE))`` as one compiled program (the forward pass is dead code),
    compiled for speed rather than run time on CPU. Returns the variables ``{'params': ...}``. Under a
    transformation (``jax.eval_shape``, ``jax.jit``) it is plain ``model.init``."""
    if isinstance(rng, jax.core.Tracer):
        return model.init(rng, jnp.zeros(INIT_SHAPE, jnp.float32))
    lowered = jax.jit(model.init).lower(rng, jax.ShapeDtypeStruct(INIT_SHAPE, jnp.float32))
    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, jnp.zeros(INIT_SHAPE, jnp.float32))


class FCN(nn.Module):
    """Fully convolutional network for semantic segmentation.

    ``__call__(x, train=False)``: ``x`` (N, H, W, 3) preprocessed images (see ``fcn_jax.preprocess``),
    any H, W >= 1; returns float32 logits (N, H, W, num_classes). ``train=True`` enables dropout and
    needs a ``'dropout'`` rng.

    Attributes:
      variant: 'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce' (``registry.VARIANTS``).
      num_classes: output classes (21 for PASCAL VOC).
      width: channel multiplier of the backbone (1.0 is the real network; e.g. 0.125 for tests).
      padding: 'reference' (conv1_1 pad 100, VALID fc6, Caffe crops) or 'same' (input padded to a
        multiple of 32, SAME convs, exact-size upsampling, crop back to H x W: about half the pixels at
        500x500, but it no longer matches the reference weights' geometry).
      dropout_rate: element-wise dropout after fc6 and fc7 in training.
      dtype: compute dtype (float32 or bfloat16); parameters are always float32.
    """

    variant: str = "fcn32s"
    num_classes: int = 21
    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    def setup(self) -> None:
        validate(self.variant, self.num_classes, self.width, self.padding)
        spec = get_variant(self.variant)
        backbone = get_backbone(spec.backbone)
        self.stride = backbone.STRIDES["top"]
        self.backbone = backbone(width=self.width, padding=self.padding, dropout_rate=self.dropout_rate,
                                 dtype=self.dtype)
        self.head = SkipHead(spec, self.num_classes, padding=self.padding, dtype=self.dtype)
        nn.share_scope(self, self.head)  # head layers sit at the top level of the parameter tree

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, got shape {x.shape}")
        height, width = x.shape[1], x.shape[2]
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (0, -height % self.stride), (0, -width % self.stride), (0, 0)))
        return self.head(self.backbone(x, train=train), height, width).astype(jnp.float32)
