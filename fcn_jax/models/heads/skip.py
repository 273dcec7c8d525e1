"""The Caffe FCN skip head: score layers, at-once feature scaling, Caffe crops, fusion and bilinear upsampling.

Parameters (the head shares its model's scope, so they sit at the top level; ``<h>`` is the head's
``suffix``, '' but for SIFT Flow's '_sem' / '_geo', ``<s>`` a late-fusion stream's, e.g. 'color')::

    score_fr<s><h>, score_<skip><h> /{kernel (1, 1, C, classes), bias}   zero-initialised 1x1 convs
    <upsampler name><h> /{kernel (k, k, classes, classes)}                 bilinear transposed convs (HWIO)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.extent import Extent
from fcn_jax.models.layers import crop
from fcn_jax.models.outputs import Output
from fcn_jax.models.spec import ONE_STREAM, Stream
from fcn_jax.models.upsample import Upsample

__all__ = ["SkipHead", "SkipSpec", "Upsampler", "crop"]


class Upsampler(NamedTuple):
    """A bilinear transposed conv: parameter name, kernel size, stride."""

    name: str
    kernel: int
    stride: int


@dataclasses.dataclass(frozen=True)
class SkipSpec:
    """The skip head's arguments.

    skips: backbone feature maps fused after the top map, in data-flow order (coarse to fine); each is
      scored by a 1x1 conv named ``score_<skip>``.
    upsamplers: in data-flow order, ``len(skips) + 1`` of them; the last is the final one.
    skip_offsets: Caffe crop offset of each skip's score map, aligned with ``skips``.
    final_offset: Caffe crop offset of the final upsampled map back to the input.
    feature_scales: fixed factors multiplying each skip's features before scoring (at-once), or None.
    suffix: appended to every layer name of this head ('' ; SIFT Flow's '_sem', '_geo').
    """

    skips: tuple[str, ...]
    upsamplers: tuple[Upsampler, ...]
    skip_offsets: tuple[int, ...]
    final_offset: int
    feature_scales: tuple[float, ...] | None = None
    suffix: str = ""

    def __post_init__(self) -> None:
        n = len(self.skips)
        if len(self.upsamplers) != n + 1 or len(self.skip_offsets) != n or (
                self.feature_scales is not None and len(self.feature_scales) != n):
            raise ValueError(f"inconsistent skip head spec {self}")

    def score_names(self, streams: Sequence[Stream] = ONE_STREAM) -> tuple[str, ...]:
        """Its score layers: ``score_fr`` per stream, then one per skip."""
        return (tuple(f"score_fr{s.suffix}{self.suffix}" for s in streams)
                + tuple(f"score_{skip}{self.suffix}" for skip in self.skips))

    def upsampler_names(self) -> tuple[str, ...]:
        """Its upsampling layers in data-flow order (the last is the final one)."""
        return tuple(u.name + self.suffix for u in self.upsamplers)


class SkipHead(nn.Module):
    """One Caffe skip head (``args``) producing ``output`` (its ``classes`` resolved).

    ``__call__(feats, height, width, train=False)``: ``feats`` one dict of NHWC backbone maps per stream
    (``'top'`` and the spec's skips); returns (N, height, width, classes) logits in ``dtype``. Streams'
    ``score_fr`` maps are summed with their coefficients (one stream: taken as is). ``padding='same'``
    upsamples to exact multiples (upsampler padding (k-s)/2) and crops at 0 instead of the Caffe offsets.
    ``extents`` (images padded into one canvas): per stream, the :class:`~fcn_jax.models.extent.Extent` of each
    map of ``feats`` and of the image (``'input'``); every score map and fused sum is masked to its extent
    and the logits to the image's, zero beyond (``MASKABLE``).
    """

    MASKABLE: ClassVar[bool] = True

    output: Output
    args: SkipSpec
    streams: tuple[Stream, ...] = ONE_STREAM
    padding: str = "reference"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        classes = self.output.classes
        score = lambda name: nn.Conv(  # noqa: E731
            classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, name=name)
        names = self.args.score_names(self.streams)
        self.score_fr = [score(name) for name in names[:len(self.streams)]]
        self.scores = {skip: score(name) for skip, name in zip(self.args.skips, names[len(self.streams):])}
        same = self.padding == "same"
        self.upsamplers = [
            Upsample(classes, k, s, padding=(k - s) // 2 if same else 0, dtype=self.dtype, name=name + self.args.suffix)
            for name, k, s in self.args.upsamplers]

    def __call__(self, feats: Sequence[Mapping[str, jax.Array]], height: int, width: int,
                 train: bool = False, extents: Sequence[Mapping[str, Extent]] | None = None) -> jax.Array:
        del train  # no dropout or normalisation in the head
        args, same = self.args, self.padding == "same"
        ext = extents[0] if extents is not None else {}
        e = ext.get("top", Extent())
        if len(self.streams) == 1:
            y = self.score_fr[0](feats[0]["top"])
        else:  # Caffe Eltwise SUM with coeff
            y = sum(jnp.asarray(stream.coefficient, self.dtype) * score(f["top"])
                    for stream, score, f in zip(self.streams, self.score_fr, feats))
        y = e.mask(y)
        for i, skip in enumerate(args.skips):
            up = self.upsamplers[i]  # no bias: zero beyond the extent stays zero
            y, e = up(y), e.deconv(up.kernel_size, up.stride, up.padding)
            features = feats[0][skip]
            if args.feature_scales is not None:
                features = features * jnp.asarray(args.feature_scales[i], features.dtype)
            scored = self.scores[skip](features)
            y = e.mask(y + crop(scored, 0 if same else args.skip_offsets[i], y.shape[1], y.shape[2]))
        y = self.upsamplers[-1](y)
        return ext.get("input", Extent()).mask(crop(y, 0 if same else args.final_offset, height, width))
