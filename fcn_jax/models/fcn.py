"""The FCN model: a backbone (``backbones.BACKBONES``) plus the skip head of a variant (``registry``).

Parameter tree (names as in pytorch-fcn's state dicts and the reference's Caffe nets, so foreign weights
map by name)::

    backbone/{conv1_1 .. conv5_3, fc6, fc7}/{kernel (HWIO), bias}
    score_fr, score_pool4, score_pool3 /{kernel, bias}        1x1 convs, zero-initialised
    upscore | upscore2, upscore16 | upscore2, upscore_pool4, upscore8 /{kernel}  bilinear transposed convs

SIFT Flow's two heads suffix their head layers ``_sem`` / ``_geo``; NYUD's late fusion has one backbone per
stream (``backbone_color``, ``backbone_hha``) and ``score_frcolor``, ``score_frhha`` (the reference's names).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.models.backbones import get_backbone
from fcn_jax.models.heads import SkipHead
from fcn_jax.models.registry import get_variant, input_shape, validate

# Dummy NHWC input to initialise (or ``jax.eval_shape``) an RGB FCN; a multiple of 32 suits both paddings.
# ``registry.input_shape(variant)`` is the one for any variant (4 or 6 channels for NYUD's fusion nets).
INIT_SHAPE: tuple[int, int, int, int] = (1, 32, 32, 3)
# XLA:CPU spends about 25 s optimising the ~40 random-number kernels of an FCN's initialisation (each
# threefry + truncated-normal kernel takes about a second); without LLVM's optimisations the same program
# compiles in about 3 s and runs once. Values may differ from a fully optimised compile in the last bit.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def initial_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
    """``model.init(rng, zeros(input_shape(model.variant)))`` as one compiled program (the forward pass is
    dead code), compiled for speed rather than run time on CPU. Returns the variables ``{'params': ...}``.
    Under a transformation (``jax.eval_shape``, ``jax.jit``) it is plain ``model.init``."""
    shape = input_shape(model.variant)
    if isinstance(rng, jax.core.Tracer):
        return model.init(rng, jnp.zeros(shape, jnp.float32))
    lowered = jax.jit(model.init).lower(rng, jax.ShapeDtypeStruct(shape, jnp.float32))
    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    return lowered.compile(compiler_options=options)(rng, jnp.zeros(shape, jnp.float32))


class FCN(nn.Module):
    """Fully convolutional network for semantic segmentation.

    ``__call__(x, train=False)``: ``x`` (N, H, W, C) preprocessed input (see ``fcn_jax.preprocess``; C = 3
    but for NYUD's fusion variants, ``registry.get_variant(v).inputs``), any H, W >= 1; returns float32
    logits (N, H, W, num_classes), or for a multi-head variant (SIFT Flow) ``{head: logits}`` with
    ``'sem'`` (num_classes) and ``'geo'`` (3). ``train=True`` enables dropout and needs a ``'dropout'`` rng.

    Attributes:
      variant: a name of ``registry.VARIANTS`` ('fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce', ...).
      num_classes: output classes (21 for PASCAL VOC; of the first head).
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
        spec = self.spec = get_variant(self.variant)
        backbone = get_backbone(spec.backbone)
        self.stride = backbone.STRIDES["top"]
        make = lambda: backbone(width=self.width, padding=self.padding,  # noqa: E731
                                dropout_rate=self.dropout_rate, dtype=self.dtype)
        if len(spec.streams) == 1:
            self.backbone = make()
        else:  # named backbone_<suffix>
            self.backbone = {stream.suffix: make() for stream in spec.streams}
        self.heads = [SkipHead(spec, head.classes or self.num_classes, padding=self.padding, head=head,
                               dtype=self.dtype) for head in spec.heads]
        for head in self.heads:
            nn.share_scope(self, head)  # head layers sit at the top level of the parameter tree

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array | dict[str, jax.Array]:
        spec = self.spec
        if x.ndim != 4 or x.shape[-1] != spec.in_channels:
            raise ValueError(f"{self.variant} expects NHWC input with {spec.in_channels} channels "
                             f"({spec.inputs}), got shape {x.shape}")
        height, width = x.shape[1], x.shape[2]
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (0, -height % self.stride), (0, -width % self.stride), (0, 0)))
        if len(spec.streams) == 1:
            feats = [self.backbone(x, train=train)]
        else:
            bounds = np.cumsum([0] + [s.channels for s in spec.streams])
            feats = [self.backbone[s.suffix](x[..., a:b], train=train)
                     for s, a, b in zip(spec.streams, bounds[:-1], bounds[1:])]
        out = {head.head.key: head(feats, height, width).astype(jnp.float32) for head in self.heads}
        return out if spec.multi_head else out[spec.heads[0].key]
