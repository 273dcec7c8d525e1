"""VGG16 backbone of FCN: 13 3x3 convs, ceil-mode 2x2 max pooling, fc6/fc7 as convolutions.

Layer names are the reference's (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``) so that foreign weights
map by name. Layout NHWC; kernels HWIO.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.layers import PatchConv, check_padding, conv_init, max_pool_ceil, scaled

__all__ = ["FC_CHANNELS", "VGG16", "VGG16_BLOCKS"]

# (block, number of convs, channels at full width)
VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))
FC_CHANNELS = 4096

class VGG16(nn.Module):
    """VGG16 feature extractor returning the named maps FCN's heads read.

    Input (N, H, W, 3) preprocessed; returns ``{'pool3', 'pool4', 'top'}`` (NHWC, ``dtype``), ``top``
    being fc7's output after dropout. ``STRIDES`` gives each map's stride relative to the input.
    ``padding='reference'``: conv1_1 pads 100 and fc6 is a VALID 7x7 conv (any H, W >= 1 works).
    ``padding='same'``: every conv is SAME (the input must be a multiple of ``STRIDES['top']``).
    Parameters: ``{conv1_1 .. conv5_3, fc6, fc7}/{kernel (HWIO), bias}``, float32.
    """

    STRIDES: ClassVar[dict[str, int]] = {"pool3": 8, "pool4": 16, "top": 32}

    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_padding(self.padding)
        conv = lambda features, name, kernel=3, pad=1: nn.Conv(  # noqa: E731
            features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=self.dtype,
            param_dtype=jnp.float32, kernel_init=conv_init, name=name)
        x = x.astype(self.dtype)
        out = {}
        for block, n_convs, channels in VGG16_BLOCKS:
            for i in range(1, n_convs + 1):
                first = block == 1 and i == 1
                pad = 100 if first and self.padding == "reference" else 1
                x = nn.relu(conv(scaled(channels, self.width), f"conv{block}_{i}", pad=pad)(x))
            x = max_pool_ceil(x)
            out[f"pool{block}"] = x
        fc = scaled(FC_CHANNELS, self.width)
        if self.padding == "same":
            x = jnp.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
        x = nn.relu(PatchConv(fc, 7, dtype=self.dtype, name="fc6")(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.relu(conv(fc, "fc7", kernel=1, pad=0)(x))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return {"pool3": out["pool3"], "pool4": out["pool4"], "top": x}
