"""FCN heads on VGG16: fcn32s, fcn16s, fcn8s and fcn8s-atonce, as in the Caffe reference.

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

from fcn_jax.models.upsample import Upsample
from fcn_jax.models.vgg import PADDINGS, VGG16

VARIANTS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce")

# Upsamplers of each variant in data-flow order: (name, kernel, stride); the last one is the final one.
UPSAMPLERS = {
    "fcn32s": (("upscore", 64, 32),),
    "fcn16s": (("upscore2", 4, 2), ("upscore16", 32, 16)),
    "fcn8s": (("upscore2", 4, 2), ("upscore_pool4", 4, 2), ("upscore8", 16, 8)),
}
UPSAMPLERS["fcn8s-atonce"] = UPSAMPLERS["fcn8s"]

# Caffe crop offsets (reference padding): skip-layer crops and the final crop back to the input.
SKIP_OFFSETS = {"score_pool4": 5, "score_pool3": 9}
FINAL_OFFSET = {"fcn32s": 19, "fcn16s": 27, "fcn8s": 31, "fcn8s-atonce": 31}
# fcn8s-atonce scales the pooled features before their score layers (fixed constants).
ATONCE_SCALE = {"score_pool4": 0.01, "score_pool3": 0.0001}


def check_variant(variant: str) -> str:
    """Returns ``variant`` if known, else raises ValueError naming the choices."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown FCN variant {variant!r}; expected one of {VARIANTS}")
    return variant


def upsampler_names(variant: str) -> tuple[str, ...]:
    """Names of the variant's upsampling layers, in data-flow order (the last is the final one)."""
    return tuple(name for name, _, _ in UPSAMPLERS[check_variant(variant)])


def crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
    """Caffe ``Crop`` on NHWC: ``x[:, offset:offset+height, offset:offset+width]``."""
    if x.shape[1] < offset + height or x.shape[2] < offset + width:
        raise ValueError(f"cannot crop {height}x{width} at offset {offset} from a map of shape {x.shape}")
    return x[:, offset:offset + height, offset:offset + width]


class FCN(nn.Module):
    """Fully convolutional network for semantic segmentation.

    ``__call__(x, train=False)``: ``x`` (N, H, W, 3) preprocessed images (see ``fcn_jax.preprocess``),
    any H, W >= 1; returns float32 logits (N, H, W, num_classes). ``train=True`` enables dropout and
    needs a ``'dropout'`` rng.

    Attributes:
      variant: 'fcn32s', 'fcn16s', 'fcn8s' or 'fcn8s-atonce'.
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
        check_variant(self.variant)
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown padding {self.padding!r}; expected one of {PADDINGS}")
        self.backbone = VGG16(width=self.width, padding=self.padding, dropout_rate=self.dropout_rate,
                              dtype=self.dtype)
        score = lambda name: nn.Conv(  # noqa: E731
            self.num_classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros, name=name)
        self.score_fr = score("score_fr")
        if self.variant != "fcn32s":
            self.score_pool4 = score("score_pool4")
        if self.variant in ("fcn8s", "fcn8s-atonce"):
            self.score_pool3 = score("score_pool3")
        same = self.padding == "same"
        self.upsamplers = {
            name: Upsample(self.num_classes, k, s, padding=(k - s) // 2 if same else 0, dtype=self.dtype,
                           name=name)
            for name, k, s in UPSAMPLERS[self.variant]}

    def _skip(self, name: str, features: jax.Array, like: jax.Array) -> jax.Array:
        """Score a pooled map and crop it to ``like`` (the upsampled coarser score)."""
        if self.variant == "fcn8s-atonce":
            features = features * jnp.asarray(ATONCE_SCALE[name], features.dtype)
        scored = getattr(self, name)(features)
        offset = 0 if self.padding == "same" else SKIP_OFFSETS[name]
        return crop(scored, offset, like.shape[1], like.shape[2])

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected NHWC images with 3 channels, got shape {x.shape}")
        height, width = x.shape[1], x.shape[2]
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (0, -height % 32), (0, -width % 32), (0, 0)))
        feats = self.backbone(x, train=train)
        names = upsampler_names(self.variant)
        y = self.upsamplers[names[0]](self.score_fr(feats["fc7"]))
        if self.variant != "fcn32s":
            y = y + self._skip("score_pool4", feats["pool4"], y)
            y = self.upsamplers[names[1]](y)
        if self.variant in ("fcn8s", "fcn8s-atonce"):
            y = y + self._skip("score_pool3", feats["pool3"], y)
            y = self.upsamplers[names[2]](y)
        offset = 0 if self.padding == "same" else FINAL_OFFSET[self.variant]
        return crop(y, offset, height, width).astype(jnp.float32)
