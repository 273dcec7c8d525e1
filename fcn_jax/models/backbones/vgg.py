"""VGG16 backbone of FCN: 13 3x3 convs, ceil-mode 2x2 max pooling, fc6/fc7 as convolutions.

Layer names are the reference's (``conv1_1`` ... ``conv5_3``, ``fc6``, ``fc7``) so that foreign weights
map by name. Layout NHWC; kernels HWIO.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.extent import Extent
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
    ``extent`` (:class:`~fcn_jax.models.extent.Extent` of ``x``, images padded into one canvas): every layer's
    output is masked to its own extent, and ``(maps, {name: Extent})`` is returned, each map what the image
    alone gives inside its extent and zero beyond (``MASKABLE``).
    Parameters: ``{conv1_1 .. conv5_3, fc6, fc7}/{kernel (HWIO), bias}``, float32.
    """

    STRIDES: ClassVar[dict[str, int]] = {"pool3": 8, "pool4": 16, "top": 32}
    MASKABLE: ClassVar[bool] = True

    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, extent: Extent | None = None
                 ) -> dict[str, jax.Array] | tuple[dict[str, jax.Array], dict[str, Extent]]:
        check_padding(self.padding)
        e = Extent() if extent is None else extent
        conv = lambda features, name, kernel=3, pad=1: nn.Conv(  # noqa: E731
            features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=self.dtype,
            param_dtype=jnp.float32, kernel_init=conv_init, name=name)
        x = x.astype(self.dtype)
        out, extents = {}, {}
        for block, n_convs, channels in VGG16_BLOCKS:
            for i in range(1, n_convs + 1):
                first = block == 1 and i == 1
                pad = 100 if first and self.padding == "reference" else 1
                e = e.window(3, 1, pad)
                x = e.mask(nn.relu(conv(scaled(channels, self.width), f"conv{block}_{i}", pad=pad)(x)))
            e = e.ceil_window(2, 2)
            x = e.mask(max_pool_ceil(x))  # ReLU outputs >= 0: the zeros beyond the extent never win
            out[f"pool{block}"], extents[f"pool{block}"] = x, e
        fc = scaled(FC_CHANNELS, self.width)
        fc6_pad = 3 if self.padding == "same" else 0
        if fc6_pad:
            x = jnp.pad(x, ((0, 0), (fc6_pad, fc6_pad), (fc6_pad, fc6_pad), (0, 0)))
        e = e.window(7, 1, fc6_pad)
        x = e.mask(nn.relu(PatchConv(fc, 7, dtype=self.dtype, name="fc6")(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = e.mask(nn.relu(conv(fc, "fc7", kernel=1, pad=0)(x)))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        maps = {"pool3": out["pool3"], "pool4": out["pool4"], "top": x}
        if extent is None:
            return maps
        return maps, {"pool3": extents["pool3"], "pool4": extents["pool4"], "top": e}
