"""The FCN model: a backbone (``backbones.BACKBONES``) plus the heads of a variant (``registry``).

Parameter tree of the Caffe family (names as in pytorch-fcn's state dicts and the reference's Caffe nets,
so foreign weights map by name)::

    backbone/{conv1_1 .. conv5_3, fc6, fc7}/{kernel (HWIO), bias}
    score_fr, score_pool4, score_pool3 /{kernel, bias}        1x1 convs, zero-initialised
    upscore | upscore2, upscore16 | upscore2, upscore_pool4, upscore8 /{kernel}  bilinear transposed convs

SIFT Flow's two heads suffix their head layers ``_sem`` / ``_geo``; NYUD's late fusion has one backbone per
stream (``backbone_color``, ``backbone_hha``) and ``score_frcolor``, ``score_frhha`` (the reference's names).
A head with a ``scope`` keeps its layers under that name instead. Collections besides ``params`` (e.g.
``batch_stats`` of a BatchNorm backbone) are the model's state: :func:`initial_variables` returns them and
training carries them.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.models.backbones import get_backbone
from fcn_jax.models.extent import Extent
from fcn_jax.models.heads import get_head
from fcn_jax.models.outputs import Output
from fcn_jax.models.registry import get_variant, input_shape, require_maskable, takes_frozen_bn, validate

# Dummy NHWC input to initialise (or ``jax.eval_shape``) an RGB FCN; a multiple of 32 suits both paddings.
# ``registry.input_shape(variant)`` is the one for any variant (4 or 6 channels for NYUD's fusion nets).
INIT_SHAPE: tuple[int, int, int, int] = (1, 32, 32, 3)
# XLA:CPU spends about 25 s optimising the ~40 random-number kernels of an FCN's initialisation (each
# threefry + truncated-normal kernel takes about a second); without LLVM's optimisations the same program
# compiles in about 3 s and runs once. Values may differ from a fully optimised compile in the last bit.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def initial_variables(model: nn.Module, rng: jax.Array) -> dict[str, Any]:
    """``model.init(rng, zeros(input_shape(model.variant)))`` as one compiled program (the forward pass is
    dead code), compiled for speed rather than run time on CPU. Returns every collection: ``{'params': ...}``
    plus e.g. ``'batch_stats'``. Under a transformation (``jax.eval_shape``, ``jax.jit``) it is plain
    ``model.init``."""
    shape = input_shape(model.variant)
    if isinstance(rng, jax.core.Tracer):
        return dict(model.init(rng, jnp.zeros(shape, jnp.float32)))
    lowered = jax.jit(model.init).lower(rng, jax.ShapeDtypeStruct(shape, jnp.float32))
    options = _FAST_COMPILE if jax.default_backend() == "cpu" else None
    return dict(lowered.compile(compiler_options=options)(rng, jnp.zeros(shape, jnp.float32)))


class FCN(nn.Module):
    """Fully convolutional network for semantic segmentation.

    ``__call__(x, train=False, return_dict=False, sizes=None)``: ``x`` (N, H, W, C) preprocessed input (see
    ``fcn_jax.preprocess``; C = ``registry.get_variant(v).in_channels``, 3 but for NYUD's fusion variants),
    any H, W >= 1. ``sizes`` (N, 2) int (h, w): each row holds an image of that size top-left in the canvas
    (a bucketed batch); every layer is then masked to that image's own extent
    (:mod:`fcn_jax.models.extent`), so inside it the logits are what the image alone gives (to float
    rounding) and 0 beyond, whatever the canvas holds there. Only for variants whose backbone and heads
    support it (``registry.maskable``: the reference-geometry networks), else ValueError. Returns ``{output name: float32 logits (N, H, W, classes)}`` of the outputs computed
    (:attr:`outputs`; training-only ones only with ``train=True``), or, when that is one output and not
    ``return_dict``, its logits alone (what ``model.apply(variables, x)`` gives for the VOC nets).
    ``train=True`` enables dropout (a ``'dropout'`` rng) and batch statistics (``mutable=['batch_stats']``
    where the backbone has BatchNorm).

    Attributes:
      variant: a name of ``registry.VARIANTS`` ('fcn32s', 'fcn16s', 'fcn8s', 'fcn8s-atonce', ...).
      num_classes: output classes (21 for PASCAL VOC; of every output that declares none).
      width: channel multiplier of the backbone (1.0 is the real network; e.g. 0.125 for tests).
      padding: 'reference' (conv1_1 pad 100, VALID fc6, Caffe crops) or 'same' (input padded to a
        multiple of the output stride, SAME convs, exact-size upsampling, crop back to H x W: about half
        the pixels at 500x500, but it no longer matches the reference weights' geometry).
      dropout_rate: element-wise dropout after fc6 and fc7 in training.
      dtype: compute dtype (float32 or bfloat16); parameters are always float32.
      frozen_bn: every BatchNorm normalises with its running statistics and never updates them, in training
        too (fine-tuning at small batches); only for variants with BatchNorm (:func:`registry.has_batchnorm`).
    """

    variant: str = "fcn32s"
    num_classes: int = 21
    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32
    frozen_bn: bool = False

    @property
    def outputs(self) -> tuple[Output, ...]:
        """Every output this model declares (classes resolved), in order."""
        return get_variant(self.variant).outputs(self.num_classes)

    def setup(self) -> None:
        validate(self.variant, self.num_classes, self.width, self.padding)
        spec = get_variant(self.variant)
        backbone = get_backbone(spec.backbone)
        self.stride = backbone.STRIDES["top"]
        bn = lambda cls: {"frozen_bn": self.frozen_bn} if takes_frozen_bn(cls) else {}  # noqa: E731
        make = lambda: backbone(width=self.width, padding=self.padding,  # noqa: E731
                                dropout_rate=self.dropout_rate, dtype=self.dtype, **bn(backbone),
                                **dict(spec.backbone_args))
        if len(spec.streams) == 1:
            self.backbone = make()
        else:  # named backbone_<suffix>
            self.backbone = {stream.suffix: make() for stream in spec.streams}
        heads = []
        for head, output in zip(spec.heads, spec.outputs(self.num_classes)):
            kind = get_head(head.kind)
            module = kind(output=output, args=head.args, streams=spec.streams, padding=self.padding,
                          dtype=self.dtype, name=head.scope, **bn(kind))
            heads.append(module)
        self.heads = heads
        for head, module in zip(spec.heads, self.heads):
            if head.scope is None:
                nn.share_scope(self, module)  # the Caffe head's layers sit at the top level of the tree

    def __call__(self, x: jax.Array, train: bool = False, return_dict: bool = False,
                 sizes: jax.Array | None = None) -> jax.Array | dict[str, jax.Array]:
        spec = get_variant(self.variant)
        if x.ndim != 4 or x.shape[-1] != spec.in_channels:
            raise ValueError(f"{self.variant} expects NHWC input with {spec.in_channels} channels "
                             f"({spec.inputs}), got shape {x.shape}")
        height, width = x.shape[1], x.shape[2]
        image = Extent()
        if sizes is not None:
            require_maskable(self.variant)
            if tuple(sizes.shape) != (x.shape[0], 2):
                raise ValueError(f"sizes must be (N, 2) = ({x.shape[0]}, 2) image heights and widths, got {sizes.shape}")
            image = Extent(sizes)
            x = image.mask(x)  # the filler is Caffe's zero padding
        extent = image
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (0, -height % self.stride), (0, -width % self.stride), (0, 0)))
            extent = image.round_up(self.stride)  # the own-size pass pads each image likewise
        bounds = np.cumsum([0] + [s.channels for s in spec.streams])
        backbones = [self.backbone] if len(spec.streams) == 1 else [self.backbone[s.suffix] for s in spec.streams]
        inputs = [x] if len(spec.streams) == 1 else [x[..., a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        if sizes is None:
            feats, extents = [b(xs, train=train) for b, xs in zip(backbones, inputs)], None
        else:
            feats, extents = zip(*[b(xs, train=train, extent=extent) for b, xs in zip(backbones, inputs)])
            extents = [{**e, "input": image} for e in extents]
        initializing = self.is_initializing()
        masked = {} if extents is None else {"extents": extents}
        out = {head.output.name: head(list(feats), height, width, train=train, **masked).astype(jnp.float32)
               for head in self.heads if head.output.evaluated or train or initializing}
        if len(out) == 1 and not return_dict:
            return next(iter(out.values()))
        return out
