"""The BatchNorm FCNs' foreign weights -> full variables (``params`` and ``batch_stats``), one table per family.

Formats, told apart by their key names (``.pth`` / ``.pt``, ``.npz`` and ``.safetensors`` alike, PyTorch
layouts):

- ``vgg11bn-seed``: seed 002's ``VGG11Segmentation`` state dict -> ``fcn-vgg11bn``: ``backbone.conv1.{weight,
  bias}``, ``backbone.bn1.{weight, bias, running_mean, running_var, num_batches_tracked}``, ... ``conv5_2`` /
  ``bn5_2``, ``conv_out.{weight, bias}`` (1x1, 512 -> classes). The model's layer names are the seed's.
- ``vgg11bn-seed-classifier``: seed 002's ``VGG11Classification`` (the same ``backbone.*``, ``fc_out`` Linear
  512 -> classes) -> ``fcn-vgg11bn``, ``fc_out`` becoming the 1x1 ``conv_out`` as the seed's
  ``copy_last_layer`` does (weight (classes, 512) -> 1x1 kernel). The seed copies the weight only and leaves
  the conv's bias at its random initialisation; here the bias is copied too, so ``conv_out`` is ``fc_out``
  (weight and bias) applied at every position of the stride-16 map.
- ``vgg11bn-torchvision``: torchvision's ImageNet ``vgg11_bn`` (``vgg11_bn-6002323d.pth``): convs at
  ``features.{0,4,8,11,15,18,22,25}``, each conv's BatchNorm at the next index -> the backbone of
  ``fcn-vgg11bn`` (the seed's backbone is ``features[:28]``); ``classifier.*`` (ImageNet) dropped; the head at
  its initialisation.
- ``fcn-resnet-torchvision``: torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` (``fcn_resnet50_coco-1167a1af
  .pth``, ``fcn_resnet101_coco-7ecb50ca.pth``): ``backbone.{conv1, bn1}``, ``backbone.layer{1..4}.{i}.{conv,
  bn}{1,2,3}``, ``.downsample.{0, 1}``, ``classifier.{0, 1, 4}``, optionally ``aux_classifier.{0, 1, 4}`` ->
  ``fcn-resnet50`` / ``fcn-resnet101``, told apart by layer3's blocks (6 / 23). Without ``aux_classifier.*``
  the auxiliary head keeps its initialisation (and the loader says so).
- ``resnet-torchvision``: torchvision's ImageNet ``resnet50`` / ``resnet101`` (``conv1.weight``, ``bn1.*``,
  ``layer1.0.conv1.weight``, ...; ``fc.*`` dropped) -> the backbone of ``fcn-resnet50`` / ``fcn-resnet101``
  (the weights of the undilated network are the dilated one's: dilation changes no shape), heads at init.

A BatchNorm's ``weight`` / ``bias`` are the parameters ``scale`` / ``bias``, its ``running_mean`` /
``running_var`` the ``batch_stats`` ``mean`` / ``var``; ``num_batches_tracked`` is optional and ignored.
Conv kernels OIHW -> HWIO. Preprocessing: 'torchvision' (RGB / 255, ImageNet mean / std).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from fcn_jax.models import get_variant
from fcn_jax.models.backbones.vgg_bn import VGG11BN_CONVS
from fcn_jax.weights import (AS_IS, FCN_RESNET_TORCHVISION, RESNET_TORCHVISION, SEED_CLASSIFIER, SEED_SEGMENTATION,
                             TORCH_CONV, TORCH_LINEAR_1X1, VGG11BN_TORCHVISION, Entry, Path, WeightsError, _config,
                             _shape, init_values, table_arrays, variable_shapes)

__all__ = ["FileModel", "detect", "file_model", "resolve", "variables_from_tensors"]

# (collection, flax leaf) -> the PyTorch parameter or buffer name
LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
          ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}
# torchvision's vgg11_bn().features: conv k of VGG11BN_CONVS at this index, its BatchNorm at the next one.
VGG11BN_FEATURE_INDEX = (0, 4, 8, 11, 15, 18, 22, 25)
VGG11BN_CONV_NAMES = tuple(name for name, _, _ in VGG11BN_CONVS)
RESNET_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}
# The network a whole-network file is, or the variant a backbone file starts unless told otherwise.
FILE_VARIANTS = {"vgg11bn": "fcn-vgg11bn", "resnet50": "fcn-resnet50", "resnet101": "fcn-resnet101"}
FCN_HEAD_INDEX = {"conv": "0", "bn": "1", "score": "4"}  # torchvision FCNHead's Sequential indices
DOWNSAMPLE_INDEX = {"downsample_conv": "0", "downsample_bn": "1"}
AUX = "aux_classifier"
IGNORED = {VGG11BN_TORCHVISION: tuple(f"classifier.{i}.{leaf}" for i in (0, 3, 6) for leaf in ("weight", "bias")),
           RESNET_TORCHVISION: ("fc.weight", "fc.bias")}
_SEED_CONVENTION = "seed 002's VGG11-BN: torchvision's convention assumed (the seed shows no preprocessing)"
CONVENTION_REASONS = {
    SEED_SEGMENTATION: _SEED_CONVENTION, SEED_CLASSIFIER: _SEED_CONVENTION,
    VGG11BN_TORCHVISION: "torchvision weights", FCN_RESNET_TORCHVISION: "torchvision weights",
    RESNET_TORCHVISION: "torchvision weights"}


@dataclasses.dataclass(frozen=True)
class FileModel:
    """What a file of a BatchNorm format is: its ``backbone``; ``variant``, the network a whole-network file
    is (None for a backbone's ImageNet weights); ``num_classes`` of its score layer (None if it has none);
    ``why``: the keys that told."""

    backbone: str
    variant: str | None
    num_classes: int | None
    why: str


def detect(keys: Any) -> str | None:
    """The BatchNorm format whose key names ``keys`` has, or None."""
    keys = set(keys)
    if "backbone.layer1.0.conv1.weight" in keys:
        return FCN_RESNET_TORCHVISION
    if "layer1.0.conv1.weight" in keys:
        return RESNET_TORCHVISION
    if "backbone.conv1.weight" in keys:  # the seed's VGG11BackBone (a ResNet's would have layer1)
        return SEED_CLASSIFIER if "fc_out.weight" in keys and "conv_out.weight" not in keys else SEED_SEGMENTATION
    if "features.1.running_mean" in keys:  # a VGG with BatchNorm (VGG16's features.1 is a ReLU)
        return VGG11BN_TORCHVISION
    return None


def _rows(tensors: Mapping[str, Any], key: str) -> int | None:
    shape = np.shape(tensors[key]) if key in tensors else ()
    return int(shape[0]) if shape else None


def _resnet(tensors: Mapping[str, Any], fmt: str, prefix: str, path: str) -> str:
    """resnet50 or resnet101, by the blocks of ``{prefix}layer3``."""
    start = f"{prefix}layer3."
    blocks = {int(k[len(start):].split(".")[0]) for k in tensors
              if k.startswith(start) and k[len(start):].split(".")[0].isdigit()}
    count = max(blocks) + 1 if blocks else 0
    if count not in RESNET_LAYER3_BLOCKS:
        raise WeightsError(f"{path}: {fmt} weights with {count} blocks in {prefix}layer3: expected 6 (ResNet-50) "
                           f"or 23 (ResNet-101)")
    return RESNET_LAYER3_BLOCKS[count]


def file_model(tensors: Mapping[str, Any], fmt: str, path: str) -> FileModel:
    """What the file of BatchNorm format ``fmt`` is (see :class:`FileModel`); raises :class:`WeightsError` for a
    ResNet whose layer3 is neither ResNet-50's nor ResNet-101's."""
    if fmt in (SEED_SEGMENTATION, SEED_CLASSIFIER):
        key = "conv_out.weight" if fmt == SEED_SEGMENTATION else "fc_out.weight"
        return FileModel("vgg11bn", FILE_VARIANTS["vgg11bn"], _rows(tensors, key), f"seed 002's keys with {key}")
    if fmt == VGG11BN_TORCHVISION:
        return FileModel("vgg11bn", None, None, "torchvision's vgg11_bn keys")
    if fmt == FCN_RESNET_TORCHVISION:
        backbone = _resnet(tensors, fmt, "backbone.", path)
        return FileModel(backbone, FILE_VARIANTS[backbone], _rows(tensors, "classifier.4.weight"),
                         f"backbone.layer3 has {_layer3(backbone)} blocks")
    backbone = _resnet(tensors, fmt, "", path)
    return FileModel(backbone, None, None, f"layer3 has {_layer3(backbone)} blocks")


def _layer3(backbone: str) -> int:
    return {v: k for k, v in RESNET_LAYER3_BLOCKS.items()}[backbone]


def resolve(tensors: Mapping[str, Any], fmt: str, path: str, variant: str | None, num_classes: int | None,
            default_variant: str | None = None, default_classes: int | None = None) -> tuple[str, int | None]:
    """(variant, num_classes) for loading a file of BatchNorm format ``fmt``: a whole network's own (a
    different ``variant`` or ``num_classes`` requested is an error; the defaults do not apply); a backbone's
    ImageNet weights start ``variant``, else ``default_variant``, else the family's FCN (``fcn-vgg11bn``,
    ``fcn-resnet50``, ``fcn-resnet101``), whose backbone must be the file's, with ``num_classes`` or
    ``default_classes`` (None: the caller's default)."""
    found = file_model(tensors, fmt, path)
    if found.variant is not None:
        if variant is not None and variant != found.variant:
            raise WeightsError(f"{path}: variant {variant} requested, but the file is {found.variant} ({found.why})")
        if found.num_classes is not None:
            if num_classes is not None and num_classes != found.num_classes:
                key = "conv_out.weight" if fmt == SEED_SEGMENTATION else (
                    "fc_out.weight" if fmt == SEED_CLASSIFIER else "classifier.4.weight")
                raise WeightsError(f"{path}: num_classes {num_classes} requested, but the weights have "
                                   f"{found.num_classes} classes ({key} has shape {_shape(np.shape(tensors[key]))})")
            num_classes = found.num_classes
        return found.variant, num_classes
    variant = variant or default_variant or FILE_VARIANTS[found.backbone]
    if get_variant(variant).backbone != found.backbone:
        raise WeightsError(f"{path}: ImageNet {found.backbone} weights ({found.why}) cannot start {variant}, whose "
                           f"backbone is {get_variant(variant).backbone}")
    return variant, num_classes if num_classes is not None else default_classes


def torch_module(fmt: str, module: tuple[str, ...]) -> str | None:
    """The PyTorch module name (``backbone.layer3.0.downsample.0``, ``features.4``, ``classifier.4``) that holds
    flax module ``module`` (``('backbone', 'layer3_0', 'downsample_conv')``) in a file of ``fmt``; None where
    the format has no such layer (a backbone file's heads)."""
    top, rest = module[0], module[1:]
    if fmt in (SEED_SEGMENTATION, SEED_CLASSIFIER):
        if module == ("conv_out",):
            return "fc_out" if fmt == SEED_CLASSIFIER else "conv_out"
        return f"backbone.{rest[0]}" if top == "backbone" and len(rest) == 1 else None
    if top != "backbone":  # heads: only torchvision's whole FCN has them
        known = fmt == FCN_RESNET_TORCHVISION and top in ("classifier", AUX) and len(rest) == 1
        return f"{top}.{FCN_HEAD_INDEX[rest[0]]}" if known and rest[0] in FCN_HEAD_INDEX else None
    if fmt == VGG11BN_TORCHVISION:
        name = rest[0]
        conv = "conv" + name[len("bn"):] if name.startswith("bn") else name
        if len(rest) != 1 or conv not in VGG11BN_CONV_NAMES:
            return None
        return f"features.{VGG11BN_FEATURE_INDEX[VGG11BN_CONV_NAMES.index(conv)] + name.startswith('bn')}"
    prefix = "backbone." if fmt == FCN_RESNET_TORCHVISION else ""
    if len(rest) == 1:  # the stem: conv1, bn1
        return prefix + rest[0]
    layer, _, block = rest[0].partition("_")  # 'layer3_0'
    name = f"downsample.{DOWNSAMPLE_INDEX[rest[1]]}" if rest[1] in DOWNSAMPLE_INDEX else rest[1]
    return f"{prefix}{layer}.{block}.{name}"


def _table(fmt: str, shapes: Mapping[Path, tuple[int, ...]], keys: set[str]
           ) -> tuple[list[Entry], list[str], list[Path]]:
    """(entries: source key -> variable path, keys tolerated and ignored, variable paths the file does not
    hold and that keep the model's initialisation)."""
    aux = any(key.startswith(f"{AUX}.") for key in keys)
    entries, ignored, initialised = [], list(IGNORED.get(fmt, ())), []
    for path, shape in sorted(shapes.items(), key=lambda item: item[0][0] != "params"):  # parameters first
        collection, module, leaf = path[0], path[1:-1], path[-1]
        name = torch_module(fmt, module)
        if name is None or (collection, leaf) not in LEAVES or (module[0] == AUX and not aux):
            initialised.append(path)
            continue
        if fmt == SEED_CLASSIFIER and module == ("conv_out",) and leaf == "kernel":
            transform = TORCH_LINEAR_1X1  # copy_last_layer: fc_out.weight (classes, 512) -> the 1x1 kernel
        else:
            transform = TORCH_CONV if len(shape) == 4 else AS_IS
        entries.append(Entry(f"{name}.{LEAVES[collection, leaf]}", path, transform))
        if leaf == "mean":
            ignored.append(f"{name}.num_batches_tracked")
    return entries, ignored, initialised


def variables_from_tensors(tensors: Mapping[str, Any], fmt: str, variant: str, num_classes: int,
                           width: float = 1.0, path: str = "weights") -> tuple[dict[str, Any], list[Path]]:
    """Source arrays (keys and layouts of BatchNorm format ``fmt``) -> (the model's variables ``{'params',
    'batch_stats'}``, float32 NumPy, HWIO kernels; the variable paths left at the model's initialisation).

    Every key the table needs must be there with the shape the model needs; keys the model does not use are an
    error, except ``num_batches_tracked`` and the ImageNet classifiers (``classifier.*`` of vgg11_bn, ``fc.*``).
    """
    shapes = variable_shapes(variant, num_classes, width)
    table, ignored, initialised = _table(fmt, shapes, set(tensors))

    def hint() -> str:
        if fmt == VGG11BN_TORCHVISION:
            return (f"; torchvision's vgg11_bn has its convs at features.{', '.join(map(str, VGG11BN_FEATURE_INDEX))}"
                    f" and each one's BatchNorm at the next index (another VGG-BN is not supported)")
        return ""
    what = f"{variant} ({num_classes} classes, width {width:g})"
    flat = table_arrays(tensors, table, shapes, fmt, what, path, ignored=ignored, hint=hint)
    if initialised:
        flat.update(init_values(_config(variant, num_classes, width), initialised))
    return traverse_util.unflatten_dict(flat), initialised
