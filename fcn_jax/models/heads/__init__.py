"""Head kinds, by name: a head turns backbone feature maps into one output's logits.

A head is a linen Module class built as ``cls(output=Output, args=<its spec>, streams=, padding=, dtype=)``
whose ``__call__(feats, height, width, train=False)`` maps one dict of NHWC feature maps per input stream
to (N, height, width, output.classes) logits. :func:`register_head` adds a kind.
"""
from __future__ import annotations

import flax.linen as nn

from fcn_jax.models.heads.bilinear import BilinearHead, BilinearSpec
from fcn_jax.models.heads.fcnhead import FCNHead, FCNHeadSpec
from fcn_jax.models.heads.skip import SkipHead, SkipSpec, Upsampler
from fcn_jax.models.table import Registry

HEADS: Registry[type[nn.Module]] = Registry("head kind", {"skip": SkipHead, "bilinear": BilinearHead,
                                                         "fcnhead": FCNHead})


def register_head(kind: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Makes head class ``cls`` available to variant specs as ``kind``; returns ``cls``."""
    return HEADS.register(kind, cls)


def get_head(kind: str) -> type[nn.Module]:
    """The head class of ``kind``, else ValueError naming the choices."""
    return HEADS.check(kind)


__all__ = ["HEADS", "BilinearHead", "BilinearSpec", "FCNHead", "FCNHeadSpec", "SkipHead", "SkipSpec", "Upsampler",
           "get_head", "register_head"]
