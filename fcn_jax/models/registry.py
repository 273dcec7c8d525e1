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


class Head(NamedTuple):
    """One output of a variant: the suffix of its layer names (``''``; SIFT Flow's ``'_sem'``, ``'_geo'``)
    and its number of classes (None: the model's ``num_classes``)."""

    suffix: str
    classes: int | None = None

    @property
    def key(self) -> str:
        """The head's name in a multi-head model's output dict (``'sem'``, ``'geo'``)."""
        return self.suffix.lstrip("_")


class Stream(NamedTuple):
    """One input stream of a late-fusion variant: the suffix of its layer names (``''``; NYUD's
    ``'color'``, ``'hha'``: ``backbone_<suffix>``, ``score_fr<suffix>``), the input channels it reads and
    the coefficient of its ``score_fr`` in the fused score (Caffe ``Eltwise`` SUM ``coeff``)."""

    suffix: str
    channels: int = 3
    coefficient: float = 1.0


ONE_HEAD = (Head(""),)
ONE_STREAM = (Stream(""),)


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
    heads: the outputs; more than one (SIFT Flow) makes the model return ``{head.key: logits}``, each
      head with its own score layers, upsamplers and crops (layer names end in ``head.suffix``).
    streams: the backbones; more than one (NYUD late fusion) splits the input's channels between them
      and sums their ``score_fr`` maps with the streams' coefficients (no skips then).
    in_channels: channels of the network input (3; NYUD early fusion 4: BGR + log depth).
    caffe_names: (parameter layer, the reference's Caffe layer name) where they differ.
    inputs: what the input channels are, in words (for docs and errors).
    """

    backbone: str
    skips: tuple[str, ...]
    upsamplers: tuple[Upsampler, ...]
    skip_offsets: tuple[int, ...]
    final_offset: int
    feature_scales: tuple[float, ...] | None
    description: str
    heads: tuple[Head, ...] = ONE_HEAD
    streams: tuple[Stream, ...] = ONE_STREAM
    in_channels: int = 3
    caffe_names: tuple[tuple[str, str], ...] = ()
    inputs: str = "RGB image"

    def __post_init__(self) -> None:
        n = len(self.skips)
        if len(self.upsamplers) != n + 1 or len(self.skip_offsets) != n or (
                self.feature_scales is not None and len(self.feature_scales) != n):
            raise ValueError(f"inconsistent variant spec {self}")
        if len(self.streams) > 1 and (self.skips or sum(s.channels for s in self.streams) != self.in_channels):
            raise ValueError(f"inconsistent variant spec {self}: fused streams take no skips and split the input")

    @property
    def multi_head(self) -> bool:
        return len(self.heads) > 1


_FCN8S = VariantSpec(
    backbone="vgg16", skips=("pool4", "pool3"),
    upsamplers=(Upsampler("upscore2", 4, 2), Upsampler("upscore_pool4", 4, 2), Upsampler("upscore8", 16, 8)),
    skip_offsets=(5, 9), final_offset=31, feature_scales=None,
    description="FCN-8s: FCN-16s plus a pool3 skip, upsampled x8")

_SPECS: dict[str, VariantSpec] = {
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
}
# SIFT Flow (siftflow-fcn*/net.py): one VGG16, two heads of the VOC variant's shape, semantic (33 classes,
# the model's num_classes) and geometric (3), each with its own score layers, upsamplers and crops.
_SIFTFLOW_HEADS = (Head("_sem"), Head("_geo", 3))
_SPECS["siftflow-fcn32s"] = replace(_SPECS["fcn32s"], heads=_SIFTFLOW_HEADS,
                                    description="SIFT Flow FCN-32s: semantic (33) and geometric (3) heads on one VGG16")
_SPECS["siftflow-fcn16s"] = replace(_SPECS["fcn16s"], heads=_SIFTFLOW_HEADS,
                                    description="SIFT Flow FCN-16s: semantic and geometric FCN-16s heads on one VGG16")
_SPECS["siftflow-fcn8s"] = replace(_FCN8S, heads=_SIFTFLOW_HEADS,
                                   description="SIFT Flow FCN-8s: semantic and geometric FCN-8s heads on one VGG16")
# NYUDv2 (nyud-fcn32s-color-d/net.py): early fusion, conv1_1 (Caffe conv1_1_bgrd) reads BGR + log depth.
_SPECS["nyud-fcn32s-color-d"] = replace(
    _SPECS["fcn32s"], in_channels=4, caffe_names=(("conv1_1", "conv1_1_bgrd"),),
    inputs="BGR image + log depth (4 channels)",
    description="NYUD FCN-32s early fusion: colour and log depth as one 4-channel input")
# NYUDv2 (nyud-fcn32s-color-hha/net.py): late fusion, a VGG16 + score_fr per modality, the two score maps
# summed with coefficients 0.5 / 0.5 (Eltwise SUM coeff), then one upscore.
_SPECS["nyud-fcn32s-color-hha"] = replace(
    _SPECS["fcn32s"], streams=(Stream("color", 3, 0.5), Stream("hha", 3, 0.5)), in_channels=6,
    inputs="BGR image + HHA (6 channels: colour first)",
    description="NYUD FCN-32s late fusion: a colour and an HHA VGG16, scores summed 0.5 / 0.5")
# voc-fcn-alexnet/net.py: CaffeNet, one 63/32 upsampler. Final offset (Caffe's coord map, per axis): a layer
# maps output index i to input coordinate s*i - p + (k-1)/2. conv1 (11, s4, p100): 4i - 95; pool1/2/5 (3, s2):
# 2i + 1; conv2-5 (p = (k-1)/2): i; fc6 (6, p0): i + 2.5; fc7, score_fr: i. Composed, score_fr cell i sits at
# input 4(2(2(2(i + 2.5) + 1) + 1) + 1) - 95 = 32i + 13; upscore (63, s32, p0) puts it at 32i + 31, so
# upscore pixel j is input pixel j - 18: crop 18 (the reference's val.prototxt says offset: 18).
_SPECS["fcn-alexnet"] = VariantSpec(
    backbone="alexnet", skips=(), upsamplers=(Upsampler("upscore", 63, 32),), skip_offsets=(), final_offset=18,
    feature_scales=None, description="FCN-AlexNet: CaffeNet fc7 scores upsampled x32 in one step")
# FCN paper Table 1 (FCN-GoogLeNet, no reference release; backbones/googlenet.py): inception_5b's scores, one
# 63/32 upsampler. Final offset as for fcn-alexnet (index i -> input s*i - p + (k-1)/2): conv1/7x7_s2 (7, s2,
# p18): 2i - 15; pool1..pool4 (3, s2, p0): 2i + 1; every other conv and the inception pools (p = (k-1)/2): i.
# Composed, score_fr cell i sits at input 2(2(2(2(2i + 1) + 1) + 1) + 1) - 15 = 32i + 15; upscore (63, s32,
# p0) puts it at 32i + 31, so upscore pixel j is input pixel j - 16: crop 16. (A 64 kernel would put it at
# 32i + 31.5: no integer crop aligns it.)
_SPECS["fcn-googlenet"] = VariantSpec(
    backbone="googlenet", skips=(), upsamplers=(Upsampler("upscore", 63, 32),), skip_offsets=(), final_offset=16,
    feature_scales=None, description="FCN-GoogLeNet: inception_5b scores upsampled x32 in one step (paper Table 1)")
SPECS: Mapping[str, VariantSpec] = MappingProxyType(_SPECS)
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
    """Names of the variant's upsampling layers, head by head, each in data-flow order (the last of each
    head is its final one)."""
    spec = get_variant(variant)
    return tuple(u.name + head.suffix for head in spec.heads for u in spec.upsamplers)


def final_upsampler_names(variant: str) -> tuple[str, ...]:
    """The final upsampler of each head."""
    spec = get_variant(variant)
    return tuple(spec.upsamplers[-1].name + head.suffix for head in spec.heads)


def input_shape(variant: str, height: int = 32, width: int = 32) -> tuple[int, int, int, int]:
    """(1, height, width, in_channels) NHWC: an input this variant takes (for init and eval_shape)."""
    return (1, height, width, get_variant(variant).in_channels)


def validate(variant: str, num_classes: int, width: float, padding: str) -> None:
    """Raises ValueError (one line) for an unknown variant or padding, num_classes < 1 or width outside (0, 1]."""
    check_variant(variant)
    check_padding(padding)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if (not isinstance(width, numbers.Real) or isinstance(width, bool) or not math.isfinite(width)
            or not 0 < width <= 1):
        raise ValueError(f"width must be a number in (0, 1], got {width!r}")
