"""Backbones of the FCN heads, by name.

A backbone is a linen Module class built as ``cls(width=, padding=, dropout_rate=, dtype=, **backbone_args)``
whose ``__call__(x, train=False)`` maps NHWC images (N, H, W, C) to a dict of NHWC feature maps: ``'top'``
(the coarsest, scored by the heads) and every other map a head reads (e.g. ``'pool4'``, ``'pool3'``).
``cls.STRIDES`` maps each of those names to its stride relative to the input. Non-parameter state
(BatchNorm's running statistics) lives in its own collections (``batch_stats``), which training carries.
:func:`register_backbone` adds one.
"""
from __future__ import annotations

import flax.linen as nn

from fcn_jax.models.backbones.alexnet import AlexNet
from fcn_jax.models.backbones.googlenet import GoogLeNet
from fcn_jax.models.backbones.resnet import ResNet50, ResNet101
from fcn_jax.models.backbones.vgg import VGG16
from fcn_jax.models.backbones.vgg_bn import VGG11BN
from fcn_jax.models.table import Registry

BACKBONES: Registry[type[nn.Module]] = Registry("backbone", {"vgg16": VGG16, "alexnet": AlexNet,
                                                             "googlenet": GoogLeNet, "vgg11bn": VGG11BN,
                                                             "resnet50": ResNet50, "resnet101": ResNet101})


def register_backbone(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Makes backbone class ``cls`` available to variant specs as ``name``; returns ``cls``."""
    return BACKBONES.register(name, cls)


def get_backbone(name: str) -> type[nn.Module]:
    """The backbone class called ``name``, else ValueError naming the choices."""
    return BACKBONES.check(name)


__all__ = ["BACKBONES", "VGG11BN", "VGG16", "ResNet50", "ResNet101", "get_backbone", "register_backbone"]
