"""Backbones of the FCN heads, by name.

A backbone is a linen Module class built as ``cls(width=, padding=, dropout_rate=, dtype=, **backbone_args)``
whose ``__call__(x, train=False)`` maps NHWC images (N, H, W, C) to a dict of NHWC feature maps: ``'top'``
(the coarsest, scored by the heads) and every other map a head reads (e.g. ``'pool4'``, ``'pool3'``).
``cls.STRIDES`` maps each of those names to its stride relative to the input. Non-parameter state
(BatchNorm's running statistics) lives in its own collections (``batch_stats``), which training carries.
:func:`register_backbone` adds one.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import flax.linen as nn

from fcn_jax.models.backbones.alexnet import AlexNet
from fcn_jax.models.backbones.googlenet import GoogLeNet
from fcn_jax.models.backbones.vgg import VGG16

_BACKBONES: dict[str, type[nn.Module]] = {"vgg16": VGG16, "alexnet": AlexNet, "googlenet": GoogLeNet}
BACKBONES: Mapping[str, type[nn.Module]] = MappingProxyType(_BACKBONES)


def register_backbone(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Makes backbone class ``cls`` available to variant specs as ``name``; returns ``cls``."""
    if name in _BACKBONES and _BACKBONES[name] is not cls:
        raise ValueError(f"backbone {name!r} is already registered")
    _BACKBONES[name] = cls
    return cls


def get_backbone(name: str) -> type[nn.Module]:
    """The backbone class called ``name``, else ValueError naming the choices."""
    if name not in _BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; expected one of {tuple(_BACKBONES)}")
    return _BACKBONES[name]


__all__ = ["BACKBONES", "VGG16", "get_backbone", "register_backbone"]
