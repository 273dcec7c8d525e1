"""Head kinds, by name: a head turns backbone feature maps into one output's logits.

A head is a linen Module class built as ``cls(output=Output, args=<its spec>, streams=, padding=, dtype=)``
whose ``__call__(feats, height, width, train=False)`` maps one dict of NHWC feature maps per input stream
to (N, height, width, output.classes) logits. :func:`register_head` adds a kind.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import flax.linen as nn

from fcn_jax.models.heads.skip import SkipHead, SkipSpec, Upsampler

_HEADS: dict[str, type[nn.Module]] = {"skip": SkipHead}
HEADS: Mapping[str, type[nn.Module]] = MappingProxyType(_HEADS)


def register_head(kind: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Makes head class ``cls`` available to variant specs as ``kind``; returns ``cls``."""
    if kind in _HEADS and _HEADS[kind] is not cls:
        raise ValueError(f"head kind {kind!r} is already registered")
    _HEADS[kind] = cls
    return cls


def get_head(kind: str) -> type[nn.Module]:
    """The head class of ``kind``, else ValueError naming the choices."""
    if kind not in _HEADS:
        raise ValueError(f"unknown head kind {kind!r}; expected one of {tuple(_HEADS)}")
    return _HEADS[kind]


__all__ = ["HEADS", "SkipHead", "SkipSpec", "Upsampler", "get_head", "register_head"]
