"""FCN skip head: score layers, at-once feature scaling, Caffe crops, fusion and bilinear upsampling.

Parameters (the head shares its parent's scope, so they sit at the model's top level)::

    score_fr, score_<skip> /{kernel (1, 1, C, num_classes), bias}   zero-initialised 1x1 convs
    <upsampler name> /{kernel (k, k, num_classes, num_classes)}       bilinear transposed convs (HWIO)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.registry import VariantSpec
from fcn_jax.models.upsample import Upsample


def crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
    """Caffe ``Crop`` on NHWC: ``x[:, offset:offset+height, offset:offset+width]``."""
    if x.shape[1] < offset + height or x.shape[2] < offset + width:
        raise ValueError(f"cannot crop {height}x{width} at offset {offset} from a map of shape {x.shape}")
    return x[:, offset:offset + height, offset:offset + width]


class SkipHead(nn.Module):
    """The FCN head of one variant spec.

    ``__call__(feats, height, width)``: ``feats`` the backbone's NHWC maps (``'top'`` and the spec's
    skips); returns (N, height, width, num_classes) logits in ``dtype``. ``padding='same'`` upsamples
    to exact multiples (upsampler padding (k-s)/2) and crops at 0 instead of the Caffe offsets.
    """

    spec: VariantSpec
    num_classes: int
    padding: str = "reference"
    dtype: Any = jnp.float32

    def setup(self) -> None:
        score = lambda name: nn.Conv(  # noqa: E731
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, name=name)
        self.score_fr = score("score_fr")
        self.scores = {skip: score(f"score_{skip}") for skip in self.spec.skips}
        same = self.padding == "same"
        self.upsamplers = [
            Upsample(self.num_classes, k, s, padding=(k - s) // 2 if same else 0, dtype=self.dtype, name=name)
            for name, k, s in self.spec.upsamplers]

    def __call__(self, feats: Mapping[str, jax.Array], height: int, width: int) -> jax.Array:
        same = self.padding == "same"
        y = self.upsamplers[0](self.score_fr(feats["top"]))
        for i, skip in enumerate(self.spec.skips):
            features = feats[skip]
            if self.spec.feature_scales is not None:
                features = features * jnp.asarray(self.spec.feature_scales[i], features.dtype)
            scored = self.scores[skip](features)
            y = y + crop(scored, 0 if same else self.spec.skip_offsets[i], y.shape[1], y.shape[2])
            y = self.upsamplers[i + 1](y)
        return crop(y, 0 if same else self.spec.final_offset, height, width)
