"""Layers shared by the backbones and heads: conv init, channel scaling, Caffe's ceil pooling and LRN, the
fc6 patch convolution, Caffe's crop, and BatchNorm with PyTorch's semantics.

Layout NHWC; kernels HWIO; parameters float32 whatever the compute ``dtype``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "PADDINGS", "BatchNorm", "PatchConv", "check_padding", "conv_init", "crop",
           "lrn", "max_pool", "max_pool_ceil", "scaled"]

# 'reference': the Caffe geometry (conv1 pad 100, VALID fc6, Caffe crops); 'same': SAME convs on an input
# padded to a multiple of the output stride, crops at 0 (faster, not the reference geometry).
PADDINGS = ("reference", "same")

conv_init = nn.initializers.kaiming_normal()

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's eps
BN_MOMENTUM = 0.9  # running = 0.9 running + 0.1 batch: PyTorch's momentum 0.1 (flax's default 0.99 differs)


def check_padding(padding: str) -> str:
    """Returns ``padding`` if known ('reference' or 'same'), else raises ValueError naming the choices."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
    return padding


def scaled(channels: int, width: float) -> int:
    """Channel count at a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def max_pool(x: jax.Array, kernel: int, stride: int,
             pads: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:
    """k x k / stride s max pooling of (N, H, W, C) with explicit (lo, hi) pads per spatial axis that never win
    (-inf). Written as ``jnp.pad`` + a VALID ``nn.max_pool`` with keyword arguments (the same values as one
    padded ``reduce_window``): the form ONNX exporters (jax2onnx) map to an ONNX MaxPool that onnxruntime runs."""
    if any(lo or hi for lo, hi in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=(kernel, kernel), strides=(stride, stride), padding="VALID")


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """2x2 / stride 2 max pooling in Caffe's ceil mode: (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C).

    One row and column of -inf below and right, whatever the parity: an even size's last window ends before
    it, an odd size's reads it (ceil mode). The output size is then ``(H - 1) // 2 + 1``, one floor division
    of H, which JAX's shape polymorphism reasons about through five nested pools (a pad of ``H % 2`` gives
    nested ``mod`` terms it cannot compare: no symbolic-size export)."""
    return max_pool(x, 2, 2, ((0, 1), (0, 1)))


def lrn(x: jax.Array, size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA,
        k: float = LRN_K) -> jax.Array:
    """Caffe's LRN, ACROSS_CHANNELS: ``x / (k + alpha / size * sum_window x^2) ** beta``, the window of
    ``size`` channels centred on each channel, zero beyond the first and last. (N, H, W, C) -> same; float32
    arithmetic, result in ``x.dtype``."""
    half = (size - 1) // 2
    x32 = x.astype(jnp.float32)
    window = jax.lax.reduce_window(jnp.square(x32), 0.0, jax.lax.add, (1, 1, 1, size), (1, 1, 1, 1),
                                   ((0, 0), (0, 0), (0, 0), (half, size - 1 - half)))
    return (x32 * (k + alpha / size * window) ** -beta).astype(x.dtype)


def crop(x: jax.Array, offset: int, height: int, width: int) -> jax.Array:
    """Caffe ``Crop`` on NHWC: ``x[:, offset:offset+height, offset:offset+width]``."""
    if x.shape[1] < offset + height or x.shape[2] < offset + width:
        raise ValueError(f"cannot crop {height}x{width} at offset {offset} from a map of shape {x.shape}")
    return x[:, offset:offset + height, offset:offset + width]


class PatchConv(nn.Module):
    """A VALID k x k convolution as one matrix product over the k*k shifted views of the input (im2col).

    Same parameters (``kernel`` HWIO, ``bias``) and outputs as ``nn.Conv``; (N, H, W, C) -> (N, H-k+1,
    W-k+1, features). Used for fc6, whose 7x7 kernel is as large as the map it reads: XLA:CPU turns the
    input gradient of that convolution into a naive loop (about 0.2 GFLOP/s, two thirds of a full-width
    train step), while a matrix product runs at full speed on every backend.
    """

    features: int
    kernel_size: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", conv_init, (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        h, w = x.shape[1] - k + 1, x.shape[2] - k + 1
        patches = jnp.concatenate([x[:, i:i + h, j:j + w] for i in range(k) for j in range(k)], axis=-1)
        y = jnp.dot(patches.astype(self.dtype), kernel.reshape(-1, self.features).astype(self.dtype))
        return y + bias.astype(self.dtype)


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` on NHWC: eps 1e-5, momentum 0.1 in PyTorch's terms.

    ``__call__(x, train)``: in training (``train=True`` and not ``frozen``) normalises with the batch's
    mean and *biased* variance over (N, H, W) and updates the running averages as PyTorch does:
    ``mean = 0.9 mean + 0.1 batch_mean``, ``var = 0.9 var + 0.1 batch_var * n / (n - 1)`` (the unbiased
    variance, n = N*H*W). Otherwise it normalises with the running averages and updates nothing.
    Statistics are computed in float32 whatever ``dtype``. Under a ``jax.jit`` whose batch is sharded over
    devices the means are over the *global* batch (SyncBN semantics): XLA reduces across the devices.

    ``frozen``: always use the running statistics (fine-tuning at small batches); the affine parameters
    still train unless the optimiser freezes them. In an FCN with ``padding='same'`` the input is padded
    to a multiple of the output stride first, so training statistics then include those padded pixels.
    Parameters ``scale`` (C,) = PyTorch's ``weight``, ``bias`` (C,); collection ``batch_stats``: ``mean``
    = ``running_mean``, ``var`` = ``running_var``.
    """

    frozen: bool = False
    momentum: float = BN_MOMENTUM
    epsilon: float = BN_EPSILON
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((channels,), jnp.float32))
        var = self.variable("batch_stats", "var", lambda: jnp.ones((channels,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if train and not self.frozen:
            axes = tuple(range(x.ndim - 1))
            batch_mean = jnp.mean(x32, axes)
            batch_var = jnp.mean(jnp.square(x32 - batch_mean), axes)
            n = x.size // channels
            if not self.is_initializing():
                mean.value = self.momentum * mean.value + (1 - self.momentum) * batch_mean
                var.value = self.momentum * var.value + (1 - self.momentum) * batch_var * (n / max(n - 1, 1))
            used_mean, used_var = batch_mean, batch_var
        else:
            used_mean, used_var = mean.value, var.value
        y = (x32 - used_mean) * (jax.lax.rsqrt(used_var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)
