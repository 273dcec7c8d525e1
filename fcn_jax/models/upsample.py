"""Learnable upsampling: a transposed convolution initialised to bilinear interpolation.

Semantics are Caffe's ``Deconvolution`` / PyTorch's ``ConvTranspose2d`` (no bias): the output is the
gradient of a convolution with respect to its input, ``conv_transpose(z, w) == d/dx <conv(x, w), z>``,
so ``out = (in - 1) * stride + kernel - 2 * padding`` per spatial axis.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def bilinear_filter(size: int) -> np.ndarray:
    """The (size, size) bilinear interpolation filter of the reference (``upsample_filt``)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = np.arange(size, dtype=np.float64)
    f = 1.0 - np.abs(og - center) / factor
    return np.outer(f, f).astype(np.float32)


def bilinear_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """Initialiser for an HWIO kernel (k, k, C, C): the bilinear filter on the channel diagonal."""
    del key
    k, k2, c_in, c_out = shape
    if k != k2 or c_in != c_out:
        raise ValueError(f"bilinear init needs a square kernel with C_in == C_out, got shape {shape}")
    kernel = np.zeros(shape, np.float32)
    kernel[:, :, np.arange(c_in), np.arange(c_out)] = bilinear_filter(k)[:, :, None]
    return jnp.asarray(kernel, dtype)


def conv_transpose(x: jax.Array, kernel: jax.Array, stride: int, padding: int = 0) -> jax.Array:
    """Transposed convolution, NHWC input, HWIO kernel, PyTorch/Caffe semantics and padding.

    ``kernel`` is HWIO of the *forward* convolution this one is the transpose of, i.e. a PyTorch
    ``ConvTranspose2d`` weight (C_in, C_out, k, k) transposed with ``(2, 3, 1, 0)``.
    """
    k = kernel.shape[0]
    pad = k - 1 - padding
    return jax.lax.conv_transpose(
        x,
        kernel,
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        transpose_kernel=True,
    )


class Upsample(nn.Module):
    """Bilinear-initialised transposed convolution with ``features`` in and out channels, no bias.

    Input (N, h, w, C) -> output (N, (h-1)*stride + kernel_size - 2*padding, ..., C).
    Parameter ``kernel`` is HWIO (k, k, C, C), float32 (``param_dtype``); compute runs in ``dtype``.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, self.features, self.features)
        kernel = self.param("kernel", bilinear_init, shape, self.param_dtype)
        return conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, self.padding)
