"""torchvision's ``FCNHead`` (``torchvision/models/segmentation/fcn.py``) with the FCN's resize to the input.

``FCNHead(in_channels, classes)``: 3x3 conv in -> in / 4 (pad 1, no bias), BatchNorm, ReLU, Dropout(0.1)
(element-wise, training only), 1x1 conv in / 4 -> classes (with bias); ``FCN.forward`` then resizes its
output to the input with ``F.interpolate(mode='bilinear', align_corners=False)``. Parameters, under the head's
scope (``classifier``; the auxiliary head's ``aux_classifier``), named after torchvision's ``Sequential``
indices 0, 1, 4::

    conv/kernel (3, 3, C, C / 4)        classifier.0.weight
    bn/{scale, bias}, batch_stats bn/{mean, var}   classifier.1.{weight, bias, running_mean, running_var}
    score/{kernel (1, 1, C / 4, classes), bias}    classifier.4.{weight, bias}
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fcn_jax.models.heads.bilinear import resize_to_input, torch_conv_init
from fcn_jax.models.layers import BatchNorm
from fcn_jax.models.outputs import Output
from fcn_jax.models.spec import ONE_STREAM, Stream

__all__ = ["FCNHead", "FCNHeadSpec"]


@dataclasses.dataclass(frozen=True)
class FCNHeadSpec:
    """The FCNHead's arguments: the backbone map it reads (``feature``: ``'top'`` = layer4 for the main
    head, ``'layer3'`` for the auxiliary one), that map's ``stride`` and the dropout rate before the score
    conv (torchvision's 0.1; the model's ``dropout_rate`` does not apply to it)."""

    feature: str = "top"
    stride: int = 8
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.stride, int) or self.stride < 1:
            raise ValueError(f"stride must be an integer >= 1, got {self.stride!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")


class FCNHead(nn.Module):
    """torchvision's FCNHead on ``feats[0][args.feature]`` (C channels; the hidden layer has C // 4),
    resized to (height, width) with :func:`~fcn_jax.models.heads.bilinear.resize_to_input`; returns
    (N, height, width, output.classes) logits in ``dtype``. ``train=True`` uses batch statistics (unless
    ``frozen_bn``) and dropout (a ``'dropout'`` rng)."""

    output: Output
    args: FCNHeadSpec = FCNHeadSpec()
    streams: tuple[Stream, ...] = ONE_STREAM
    padding: str = "reference"
    dtype: Any = jnp.float32
    frozen_bn: bool = False

    @nn.compact
    def __call__(self, feats: Sequence[Mapping[str, jax.Array]], height: int, width: int,
                 train: bool = False) -> jax.Array:
        if len(feats) != 1:
            raise ValueError(f"the FCN head reads one input stream, got {len(feats)}")
        x = feats[0][self.args.feature]
        hidden = max(1, x.shape[-1] // 4)
        x = nn.Conv(hidden, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                    param_dtype=jnp.float32, kernel_init=torch_conv_init, name="conv")(x)
        x = nn.relu(BatchNorm(frozen=self.frozen_bn, dtype=self.dtype, name="bn")(x, train=train))
        x = nn.Dropout(self.args.dropout, deterministic=not train)(x)
        x = nn.Conv(self.output.classes, (1, 1), dtype=self.dtype, param_dtype=jnp.float32,
                    kernel_init=torch_conv_init, name="score")(x)
        return resize_to_input(x, height, width, self.args.stride, self.padding)
