"""The seed's segmentation head (``VGG11Segmentation`` of seed 002): a 1x1 conv ``conv_out`` (features ->
classes, with bias) on one backbone map, then bilinear interpolation (``align_corners=False``) to the input.

The seed upsamples with ``nn.Upsample(scale_factor=16)``; this head resizes to the exact input size, which for
inputs that are multiples of the stride is the same interpolation, and for any other size is
``F.interpolate(size=input)``. Parameters (the head shares its model's scope, as the seed's ``conv_out`` sits
beside ``backbone``): ``conv_out/{kernel (1, 1, C, classes), bias}``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.outputs import Output
from fcn_jax.models.spec import ONE_STREAM, Stream

__all__ = ["BilinearHead", "BilinearSpec", "resize_to_input", "torch_conv_init"]

# PyTorch's default Conv2d init (kaiming_uniform with a = sqrt(5)): uniform with variance 1 / (3 fan_in).
torch_conv_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def resize_to_input(y: jax.Array, height: int, width: int, stride: int, padding: str) -> jax.Array:
    """A stride-``stride`` map (N, h, w, C) resized bilinearly to the input's (N, height, width, C) as
    ``F.interpolate(mode='bilinear', align_corners=False)`` (half-pixel centres; ``antialias=False``, which
    for the upsampling done here changes nothing). ``padding='same'``: the FCN padded the input to
    (h * stride, w * stride), so the map is upsampled by exactly ``stride`` and cropped to height x width."""
    n, h, w, c = y.shape
    if padding == "same":
        if h * stride < height or w * stride < width:
            raise ValueError(f"a {h}x{w} map at stride {stride} cannot cover a {height}x{width} input")
        y = jax.image.resize(y, (n, h * stride, w * stride, c), "bilinear", antialias=False)
        return y[:, :height, :width]
    return jax.image.resize(y, (n, height, width, c), "bilinear", antialias=False)


@dataclasses.dataclass(frozen=True)
class BilinearSpec:
    """The bilinear head's arguments: the backbone map it scores (``feature``), that map's ``stride`` and the
    name of its 1x1 conv (the seed's ``conv_out``)."""

    feature: str = "top"
    stride: int = 16
    name: str = "conv_out"

    def __post_init__(self) -> None:
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")


class BilinearHead(nn.Module):
    """``conv_out`` (1x1, with bias) on ``feats[0][args.feature]``, resized to (height, width) with
    :func:`resize_to_input`; returns (N, height, width, output.classes) logits in ``dtype``. One input
    stream; no dropout or normalisation (``train`` changes nothing)."""

    output: Output
    args: BilinearSpec = BilinearSpec()
    streams: tuple[Stream, ...] = ONE_STREAM
    padding: str = "reference"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: Sequence[Mapping[str, jax.Array]], height: int, width: int,
                 train: bool = False) -> jax.Array:
        del train
        if len(feats) != 1:
            raise ValueError(f"the bilinear head reads one input stream, got {len(feats)}")
        y = nn.Conv(self.output.classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=torch_conv_init, name=self.args.name)(feats[0][self.args.feature])
        return resize_to_input(y, height, width, self.args.stride, self.padding)
