"""The FCN variants, one table: variant name -> ``VariantSpec``; the one place names are validated.

Crop offsets are the Caffe reference's (``padding='reference'``); ``padding='same'`` crops at 0.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import NamedTuple

PADDINGS = ("reference", "same")


class Upsampler(NamedTuple):
    """A bilinear transposed conv: parameter name, kernel size, stride."""

    name: str
    kernel: int
    stride: int


@dataclass(frozen=True)
class VariantSpec:
    """One FCN variant.

    backbone: key of ``fcn_jax.models.backbones.BACKBONES``.
    skips: backbone feature maps fused after the top map, in data-flow order (coarse to fine); each is
      scored by a 1x1 conv named ``score_<skip>``.
    upsamplers: in data-flow order, ``len(skips) + 1`` of them; the last is the final one.
    skip_offsets: Caffe crop offset of each skip's score map, aligned with ``skips``.
    final_offset: Caffe crop offset of the final upsampled map back to the input.
    feature_scales: fixed factors multiplying each skip's features before scoring (at-once), or None.
    """

    backbone: str
    skips: tuple[str, ...]
    upsamplers: tuple[Upsampler, ...]
    skip_offsets: tuple[int, ...]
    final_offset: int
    feature_scales: tuple[float, ...] | None
    description: str

    def __post_init__(self) -> None:
        n = len(self.skips)
        if len(self.upsamplers) != n + 1 or len(self.skip_offsets) != n or (
                self.feature_scales is not None and len(self.feature_scales) != n):
            raise ValueError(f"inconsistent variant spec {self}")


_FCN8S = VariantSpec(
    backbone="vgg16", skips=("pool4", "pool3"),
    upsamplers=(Upsampler("upscore2", 4, 2), Upsampler("upscore_pool4", 4, 2), Upsampler("upscore8", 16, 8)),
    skip_offsets=(5, 9), final_offset=31, feature_scales=None,
    description="FCN-8s: FCN-16s plus a pool3 skip, upsampled x8")

SPECS: Mapping[str, VariantSpec] = MappingProxyType({
    "fcn32s": VariantSpec(
        backbone="vgg16", skips=(), upsamplers=(Upsampler("upscore", 64, 32),),
        skip_offsets=(), final_offset=19, feature_scales=None,
        description="FCN-32s: fc7 scores upsampled x32 in one step"),
    "fcn16s": VariantSpec(
        backbone="vgg16", skips=("pool4",), upsamplers=(Upsampler("upscore2", 4, 2), Upsampler("upscore16", 32, 16)),
        skip_offsets=(5,), final_offset=27, feature_scales=None,
        description="FCN-16s: FCN-32s plus a pool4 skip, upsampled x16"),
    "fcn8s": _FCN8S,
    "fcn8s-atonce": replace(
        _FCN8S, feature_scales=(0.01, 0.0001),
        description="FCN-8s trained at once: pool4 x0.01 and pool3 x0.0001 before their score layers"),
})
VARIANTS: tuple[str, ...] = tuple(SPECS)


def check_variant(variant: str) -> str:
    """Returns ``variant`` if known, else raises ValueError naming the choices."""
    if variant not in SPECS:
        raise ValueError(f"unknown FCN variant {variant!r}; expected one of {VARIANTS}")
    return variant


def check_padding(padding: str) -> str:
    """Returns ``padding`` if known ('reference' or 'same'), else raises ValueError naming the choices."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}; expected one of {PADDINGS}")
    return padding


def get_variant(variant: str) -> VariantSpec:
    """The spec of a (validated) variant name."""
    return SPECS[check_variant(variant)]


def upsampler_names(variant: str) -> tuple[str, ...]:
    """Names of the variant's upsampling layers, in data-flow order (the last is the final one)."""
    return tuple(u.name for u in get_variant(variant).upsamplers)


def validate(variant: str, num_classes: int, width: float, padding: str) -> None:
    """Raises ValueError (one line) for an unknown variant or padding, num_classes < 1 or width outside (0, 1]."""
    check_variant(variant)
    check_padding(padding)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if (not isinstance(width, numbers.Real) or isinstance(width, bool) or not math.isfinite(width)
            or not 0 < width <= 1):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
