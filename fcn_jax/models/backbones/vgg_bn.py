"""VGG11-BN backbone of the seed's FCN (``VGG11BackBone`` of seed 002, torchvision's ``vgg11_bn().features[:28]``).

conv1 (64) bn1 ReLU pool1, conv2 (128) bn2 ReLU pool2, conv3_1/3_2 (256) pool3, conv4_1/4_2 (512) pool4,
conv5_1/5_2 (512): BatchNorm and ReLU after every conv, every conv 3x3 pad 1 with bias, pools 2x2 stride 2 in
floor mode, and *no* pool5 (output stride 16). Layer names are the seed's PyTorch module names (``conv1``,
``bn1``, ..., ``conv5_2``, ``bn5_2``), so its state dict maps by name. Layout NHWC; kernels HWIO.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.layers import BatchNorm, check_padding, conv_init, max_pool, scaled

__all__ = ["VGG11BN", "VGG11BN_CONVS", "VGG11BN_STRIDE"]

# (conv name (its BatchNorm is 'bn' + the same suffix), channels at full width, max pool after it)
VGG11BN_CONVS = (("conv1", 64, True), ("conv2", 128, True), ("conv3_1", 256, False), ("conv3_2", 256, True),
                 ("conv4_1", 512, False), ("conv4_2", 512, True), ("conv5_1", 512, False), ("conv5_2", 512, False))
VGG11BN_STRIDE = 16  # four 2x2 pools, no pool5


def max_pool_floor(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(2, 2)``: 2x2 / stride 2 max pooling in floor mode, (N, H, W, C) -> (N, H//2, W//2, C)."""
    return max_pool(x, 2, 2)


class VGG11BN(nn.Module):
    """The seed's VGG11-BN feature extractor: (N, H, W, 3) -> ``{'top': conv5_2's map}`` at stride 16
    (floor(H / 16) x floor(W / 16), 512 * width channels, ``dtype``).

    ``padding`` is accepted for the FCN contract and changes nothing here (the FCN pads the input to a
    multiple of 16 for 'same'); with 'reference' the input must be at least 16 x 16 (floor pooling). No
    dropout (``dropout_rate`` is unused). ``frozen_bn``: every BatchNorm uses and keeps its running
    statistics in training too. Parameters ``{conv*}/{kernel (HWIO), bias}``, ``{bn*}/{scale, bias}``;
    ``batch_stats``: ``{bn*}/{mean, var}``.
    """

    STRIDES: ClassVar[dict[str, int]] = {"top": VGG11BN_STRIDE}

    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    frozen_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_padding(self.padding)
        if x.shape[1] < VGG11BN_STRIDE or x.shape[2] < VGG11BN_STRIDE:
            raise ValueError(f"the VGG11-BN backbone needs an input of at least {VGG11BN_STRIDE}x{VGG11BN_STRIDE} "
                             f"pixels (four floor-mode 2x2 pools), got {x.shape[1]}x{x.shape[2]}")
        x = x.astype(self.dtype)
        for name, channels, pool in VGG11BN_CONVS:
            x = nn.Conv(scaled(channels, self.width), (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                        param_dtype=jnp.float32, kernel_init=conv_init, name=name)(x)
            x = BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name="bn" + name[4:])(x, train=train)
            x = nn.relu(x)
            if pool:
                x = max_pool_floor(x)
        return {"top": x}
