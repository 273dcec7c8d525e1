"""Dilated ResNet-50 / ResNet-101 backbones of torchvision's FCN-ResNet (``torchvision.models.resnet``).

ResNet v1.5 (the bottleneck's stride on its 3x3 conv) with ``replace_stride_with_dilation=[False, True,
True]`` (output stride 8), as ``torchvision.models.segmentation.fcn_resnet50/101`` build it: stem conv1 7x7/2
pad 3 (no bias), bn1, ReLU, 3x3/2 max pool pad 1; layer1..layer4 of bottlenecks (1x1, 3x3, 1x1 convs without
bias, each followed by BatchNorm; ReLU after the first two and after the residual sum; a 1x1 conv + BatchNorm
``downsample`` on the first block of each layer). In layer3 block 0 keeps dilation 1 and the later blocks use
2; in layer4 block 0 uses 2 and the later blocks 4; a 3x3 conv's padding is its dilation; layer3's and
layer4's downsample have stride 1.

Layer names mirror torchvision's module names: ``conv1``, ``bn1``, ``layer{1..4}_{i}/{conv1..3, bn1..3,
downsample_conv, downsample_bn}`` (``backbone.layer3.0.downsample.0`` -> ``layer3_0/downsample_conv``, ``.1``
-> ``downsample_bn``). ``width`` scales every layer's channels (width 1 is torchvision's: planes 64, 128,
256, 512, expansion 4). Layout NHWC; kernels HWIO.
"""
from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.layers import BatchNorm, check_padding, max_pool, scaled

__all__ = ["EXPANSION", "RESNET_PLANES", "ResNet", "ResNet50", "ResNet101", "layer_dilations"]

RESNET_PLANES = (64, 128, 256, 512)  # planes of layer1..layer4 at full width (stem: 64 channels)
EXPANSION = 4  # a bottleneck's output channels are 4 x its planes
REPLACE_STRIDE_WITH_DILATION = (False, True, True)  # layer2..layer4, as torchvision's FCNs build them

# torchvision's ResNet init: kaiming_normal_(mode='fan_out', nonlinearity='relu').
resnet_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def layer_dilations(blocks: tuple[int, ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """(stride, dilation) of the 3x3 conv of every block of every layer, as torchvision's ``_make_layer``
    sets them with ``replace_stride_with_dilation=[False, True, True]``: a layer's stride 2 becomes a doubled
    dilation for its later blocks; its first block keeps the previous dilation."""
    layers, dilation = [], 1
    for i, n in enumerate(blocks):
        stride, previous = (1 if i == 0 else 2), dilation
        if i > 0 and REPLACE_STRIDE_WITH_DILATION[i - 1]:
            dilation, stride = dilation * stride, 1
        layers.append(((stride, previous),) + ((1, dilation),) * (n - 1))
    return tuple(layers)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5): 1x1 -> 3x3 (stride, dilation) -> 1x1 (4 x planes), BN after each,
    the residual sum (through ``downsample`` where the shape changes) then ReLU."""

    planes: int
    stride: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    frozen_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        conv = lambda features, kernel, name, stride=1, dilation=1: nn.Conv(  # noqa: E731
            features, (kernel, kernel), strides=(stride, stride), padding=((dilation * (kernel // 2),) * 2,) * 2,
            kernel_dilation=(dilation, dilation), use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
            kernel_init=resnet_conv_init, name=name)
        bn = lambda name: BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name=name)  # noqa: E731
        y = nn.relu(bn("bn1")(conv(self.planes, 1, "conv1")(x), train=train))
        y = nn.relu(bn("bn2")(conv(self.planes, 3, "conv2", self.stride, self.dilation)(y), train=train))
        y = bn("bn3")(conv(self.planes * EXPANSION, 1, "conv3")(y), train=train)
        if self.downsample:
            x = bn("downsample_bn")(conv(self.planes * EXPANSION, 1, "downsample_conv", self.stride)(x), train=train)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """Dilated ResNet feature extractor: (N, H, W, 3) -> ``{'layer3', 'top'}`` (layer3's and layer4's maps,
    both at stride 8: ceil(H / 8) x ceil(W / 8), 1024 and 2048 channels at width 1, ``dtype``).

    ``blocks``: bottlenecks per layer ((3, 4, 6, 3) ResNet-50, (3, 4, 23, 3) ResNet-101). ``padding`` is
    accepted for the FCN contract and changes nothing here (the FCN pads the input to a multiple of 8 for
    'same'). No dropout (``dropout_rate`` is unused). ``frozen_bn``: every BatchNorm uses and keeps its
    running statistics in training too. Parameters: ``{conv*, downsample_conv}/kernel`` (HWIO, no biases),
    ``{bn*, downsample_bn}/{scale, bias}``; ``batch_stats``: ``{bn*, downsample_bn}/{mean, var}``.
    """

    STRIDES: ClassVar[dict[str, int]] = {"layer3": 8, "top": 8}

    blocks: tuple[int, ...] = (3, 4, 6, 3)
    width: float = 1.0
    padding: str = "reference"
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    frozen_bn: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        check_padding(self.padding)
        x = x.astype(self.dtype)
        x = nn.Conv(scaled(64, self.width), (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                    dtype=self.dtype, param_dtype=jnp.float32, kernel_init=resnet_conv_init, name="conv1")(x)
        x = nn.relu(BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name="bn1")(x, train=train))
        x = max_pool(x, 3, 2, ((1, 1), (1, 1)))  # pads with -inf, as torch
        channels, out = scaled(64, self.width), {}
        for layer, (planes, settings) in enumerate(zip(RESNET_PLANES, layer_dilations(self.blocks)), start=1):
            planes = scaled(planes, self.width)
            for i, (stride, dilation) in enumerate(settings):
                x = Bottleneck(planes, stride, dilation, downsample=i == 0 and (
                    stride != 1 or channels != planes * EXPANSION), dtype=self.dtype, frozen_bn=self.frozen_bn,
                    name=f"layer{layer}_{i}")(x, train=train)
                channels = planes * EXPANSION
            out[f"layer{layer}"] = x
        return {"layer3": out["layer3"], "top": out["layer4"]}


class ResNet50(ResNet):
    """ResNet-50: (3, 4, 6, 3) bottlenecks."""

    blocks: tuple[int, ...] = (3, 4, 6, 3)


class ResNet101(ResNet):
    """ResNet-101: (3, 4, 23, 3) bottlenecks."""

    blocks: tuple[int, ...] = (3, 4, 23, 3)
