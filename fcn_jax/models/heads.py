"""FCN skip head: score layers, at-once feature scaling, Caffe crops, fusion and bilinear upsampling.

Parameters (the head shares its parent's scope, so they sit at the model's top level; ``<h>`` is the
head's suffix, '' but for SIFT Flow's '_sem' / '_geo', ``<s>`` a late-fusion stream's, e.g. 'color')::

    score_fr<s><h>, score_<skip><h> /{kernel (1, 1, C, classes), bias}   zero-initialised 1x1 convs
    <upsampler name><h> /{kernel (k, k, classes, classes)}                 bilinear transposed convs (HWIO)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.registry import ONE_HEAD, Head, VariantSpec
from fcn_jax.models.upsample import Upsample


def crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
    """Caffe ``Crop`` on NHWC: ``x[:, offset:offset+height, offset:offset+width]``."""
    if x.shape[1] < offset + height or x.shape[2] < offset + width:
        raise ValueError(f"cannot crop {height}x{width} at offset {offset} from a map of shape {x.shape}")
    return x[:, offset:offset + height, offset:offset + width]


class SkipHead(nn.Module):
    """One head of a variant spec (``head``: its layer-name suffix; classes ``num_classes``).

    ``__call__(feats, height, width)``: ``feats`` one dict of NHWC backbone maps per stream of the spec
    (``'top'`` and the spec's skips); returns (N, height, width, num_classes) logits in ``dtype``. Streams'
    ``score_fr`` maps are summed with their coefficients (one stream: taken as is). ``padding='same'``
    upsamples to exact multiples (upsampler padding (k-s)/2) and crops at 0 instead of the Caffe offsets.
    """

    spec: VariantSpec
    num_classes: int
    padding: str = "reference"
    head: Head = ONE_HEAD[0]
    dtype: Any = jnp.float32

    def setup(self) -> None:
        h = self.head.suffix
        score = lambda name: nn.Conv(  # noqa: E731
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, name=name)
        self.score_fr = [score(f"score_fr{stream.suffix}{h}") for stream in self.spec.streams]
        self.scores = {skip: score(f"score_{skip}{h}") for skip in self.spec.skips}
        same = self.padding == "same"
        self.upsamplers = [
            Upsample(self.num_classes, k, s, padding=(k - s) // 2 if same else 0, dtype=self.dtype, name=name + h)
            for name, k, s in self.spec.upsamplers]

    def __call__(self, feats: Sequence[Mapping[str, jax.Array]], height: int, width: int) -> jax.Array:
        same = self.padding == "same"
        if len(self.spec.streams) == 1:
            y = self.score_fr[0](feats[0]["top"])
        else:  # Caffe Eltwise SUM with coeff
            y = sum(jnp.asarray(stream.coefficient, self.dtype) * score(f["top"])
                    for stream, score, f in zip(self.spec.streams, self.score_fr, feats))
        y = self.upsamplers[0](y)
        for i, skip in enumerate(self.spec.skips):
            features = feats[0][skip]
            if self.spec.feature_scales is not None:
                features = features * jnp.asarray(self.spec.feature_scales[i], features.dtype)
            scored = self.scores[skip](features)
            y = y + crop(scored, 0 if same else self.spec.skip_offsets[i], y.shape[1], y.shape[2])
            y = self.upsamplers[i + 1](y)
        return crop(y, 0 if same else self.spec.final_offset, height, width)
