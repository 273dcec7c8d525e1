"""Backbones of the FCN heads, by name.

A backbone is a linen Module class built as ``cls(width=, padding=, dropout_rate=, dtype=)`` whose
``__call__(x, train=False)`` maps NHWC images (N, H, W, 3) to a dict of NHWC feature maps: ``'top'``
(the coarsest, scored by ``score_fr``) and every skip a variant names (e.g. ``'pool4'``, ``'pool3'``).
``cls.STRIDES`` maps each of those names to its stride relative to the input.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import flax.linen as nn

from fcn_jax.models.backbones.alexnet import AlexNet
from fcn_jax.models.backbones.googlenet import GoogLeNet
from fcn_jax.models.backbones.vgg import VGG16

BACKBONES: Mapping[str, type[nn.Module]] = MappingProxyType({"vgg16": VGG16, "alexnet": AlexNet,
                                                                "googlenet": GoogLeNet})


def get_backbone(name: str) -> type[nn.Module]:
    """The backbone class called ``name``, else ValueError naming the choices."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {tuple(BACKBONES)}")
    return BACKBONES[name]


__all__ = ["BACKBONES", "VGG16", "get_backbone"]
