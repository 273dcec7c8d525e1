"""Foreign weights -> flax parameters for :class:`fcn_jax.models.FCN`, with their preprocessing convention.

Formats, told apart by their key names whatever the container:

- ``fcn``: pytorch-fcn state dicts (``fcn32s_from_caffe.pth``, ``fcn16s_from_caffe.pth``,
  ``fcn8s_from_caffe.pth``, ``fcn8s-atonce_from_caffe.pth``): ``{layer}.weight`` / ``{layer}.bias`` for
  ``conv1_1`` .. ``conv5_3`` (PyTorch OIHW), ``fc6`` (4096, 512, 7, 7), ``fc7`` (4096, 4096, 1, 1),
  ``score_fr`` / ``score_pool4`` / ``score_pool3`` (n, C, 1, 1), and ``upscore*.weight`` (ConvTranspose2d
  (C_in, C_out, k, k), no bias). Layer names are the model's own, so the table is its parameter tree.
- ``vgg16-torch``: torchvision / pytorch-fcn VGG16 (``vgg16_from_caffe.pth``, ``vgg16-397923af.pth``):
  ``features.{0,2,5,...,28}.{weight,bias}`` (OIHW), ``classifier.0.weight`` (4096, 25088) flattened in
  C,H,W order, ``classifier.3.weight`` (4096, 4096); ``classifier.6`` (the 1000 ImageNet classes) is ignored.
- ``vgg16-keras``: ``vgg16_weights_tf_dim_ordering_tf_kernels.h5``: ``block{b}_conv{i}`` kernels (3, 3, I, O)
  and biases, ``fc1`` (25088, 4096) flattened in H,W,C order, ``fc2`` (4096, 4096); ``predictions`` ignored.
- The BatchNorm FCNs' (tables in :mod:`fcn_jax.weights_bn`, variables with ``batch_stats``): ``vgg11bn-seed``
  and ``vgg11bn-seed-classifier`` (seed 002's VGG11-BN segmentation / classification state dicts),
  ``vgg11bn-torchvision`` (ImageNet ``vgg11_bn``), ``fcn-resnet-torchvision`` (``fcn_resnet50/101``) and
  ``resnet-torchvision`` (ImageNet ``resnet50/101``); preprocessing 'torchvision'.

Containers: ``.pth`` / ``.pt`` (``torch.load``; needs torch), ``.npz`` and ``.safetensors`` (the same key
names and PyTorch / Keras layouts as the source, so no torch is needed), ``.h5`` / ``.hdf5`` (Keras
``save_weights`` layout), ``.caffemodel`` (the original Caffe files, decoded by :mod:`fcn_jax.caffe`: an
FCN's layer blobs become the ``fcn`` keys, Caffe's Convolution (O, I, kh, kw) and Deconvolution (C_in, C_out,
k, k) weights being PyTorch's layouts; a VGG16 without an FCN head (``VGG_ILSVRC_16_layers.caffemodel``)
becomes the ``vgg16-torch`` keys, Caffe's InnerProduct flattening C,H,W as torchvision does; preprocessing
'caffe'). fcn-jax checkpoint directories are read by :mod:`fcn_jax.loading`, the one loader every tool and
the Python API use; this module is its ``load()`` hook for foreign files.

The model's parameters are NHWC-style: conv kernels HWIO, fc6 a (7, 7, C, 4096) conv, fc7 (1, 1, 4096, 4096),
upsamplers (k, k, C, C) for ``lax.conv_transpose(..., transpose_kernel=True)``. VGG16 sources fill the
backbone; the heads keep the model's own initialisation (score layers zero, upsamplers bilinear).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fcn_jax.config import ModelConfig, to_dict
from fcn_jax.models import VARIANTS, VGG16_BLOCKS, VariantSpec, check_variant, get_variant, input_shape, skip_specs
from fcn_jax.preprocess import CAFFE, TORCHVISION, check_convention

log = logging.getLogger(__name__)

FCN_FORMAT = "fcn"
VGG16_TORCH = "vgg16-torch"
VGG16_KERAS = "vgg16-keras"
BACKBONE_FORMAT = "imagenet-backbone"  # a backbone's own parameter paths ('backbone/conv1/kernel'), HWIO
# The BatchNorm families' formats (their tables: fcn_jax.weights_bn).
SEED_SEGMENTATION = "vgg11bn-seed"  # seed 002's VGG11Segmentation state dict
SEED_CLASSIFIER = "vgg11bn-seed-classifier"  # seed 002's VGG11Classification (fc_out -> the 1x1 conv_out)
VGG11BN_TORCHVISION = "vgg11bn-torchvision"  # torchvision's ImageNet vgg11_bn
FCN_RESNET_TORCHVISION = "fcn-resnet-torchvision"  # torchvision's fcn_resnet50/101 (COCO)
RESNET_TORCHVISION = "resnet-torchvision"  # torchvision's ImageNet resnet50/101
BN_FORMATS = (SEED_SEGMENTATION, SEED_CLASSIFIER, VGG11BN_TORCHVISION, FCN_RESNET_TORCHVISION, RESNET_TORCHVISION)
FORMATS = (FCN_FORMAT, VGG16_TORCH, VGG16_KERAS, BACKBONE_FORMAT) + BN_FORMATS
# ImageNet .caffemodels of the other backbones: a layer only that net has -> the backbone whose module
# (fcn_jax.models.backbones.<name>) converts its blobs with ``caffe_imagenet_params``.
IMAGENET_CAFFE_SIGNATURES = (("conv1/7x7_s2", "googlenet"), ("conv1", "alexnet"))

TORCH_SUFFIXES = (".pth", ".pt")
NPZ_SUFFIXES = (".npz",)
SAFETENSORS_SUFFIXES = (".safetensors",)
NETWORK_SUFFIXES = (".prototxt", ".pbtxt")  # definitions without weights: a common mix-up
H5_SUFFIXES = (".h5", ".hdf5")
CAFFE_SUFFIXES = (".caffemodel",)
SUFFIXES = TORCH_SUFFIXES + NPZ_SUFFIXES + SAFETENSORS_SUFFIXES + H5_SUFFIXES + CAFFE_SUFFIXES

# Optional preprocessing tag carried by converted files: npz key / safetensors metadata key.
NPZ_PREPROCESSING_KEY = "__preprocessing__"
SAFETENSORS_PREPROCESSING_KEY = "preprocessing"

SHOWN_SHAPES = 8  # shape errors named in full; the count of the rest follows
FC6_SIZE = 7  # fc6 sees a 7x7 patch of pool5
VGG16_DEFAULT_CLASSES = 21  # a VGG16 file has no FCN head: PASCAL VOC unless told otherwise
CONVS = tuple(f"conv{b}_{i}" for b, n, _ in VGG16_BLOCKS for i in range(1, n + 1))
# Positions of the 13 convs in torchvision's ``vgg16().features`` (conv, ReLU pairs; a pool after each block).
TORCH_FEATURE_INDEX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

Path = tuple[str, ...]


class WeightsError(ValueError):
    """A weights file that cannot be read or does not fit the requested model; the message names the
    file and the offending keys."""


@dataclasses.dataclass(frozen=True)
class Transform:
    """One source array layout: ``to_param`` maps it to the model's layout, ``source_shape`` maps a
    model parameter shape back to the source shape it needs (for checks and error messages).
    Both use array methods only, so they work on NumPy arrays and jax tracers alike."""

    layout: str
    to_param: Callable[[Any], Any]
    source_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


AS_IS = Transform("as is", lambda w: w, lambda s: tuple(s))
# Conv2d (O, I, kh, kw) and ConvTranspose2d (C_in, C_out, k, k) both become (k, k, dim1, dim0).
TORCH_CONV = Transform("PyTorch (O, I, kh, kw)", lambda w: w.transpose(2, 3, 1, 0),
                       lambda s: (s[3], s[2], s[0], s[1]))
TORCH_LINEAR_1X1 = Transform("PyTorch Linear (out, in)", lambda w: w.T[None, None], lambda s: (s[3], s[2]))
KERAS_DENSE_1X1 = Transform("Keras Dense (in, out)", lambda w: w[None, None], lambda s: (s[2], s[3]))
# fc6 convolutionalised: a dense layer on the flattened 7x7xC patch is the 7x7 conv at that position.
TORCH_LINEAR_CHW = Transform(
    "PyTorch Linear (out, C*7*7), input flattened C,H,W",
    lambda w: w.reshape(w.shape[0], -1, FC6_SIZE, FC6_SIZE).transpose(2, 3, 1, 0),
    lambda s: (s[3], s[0] * s[1] * s[2]))
KERAS_DENSE_HWC = Transform(
    "Keras Dense (7*7*C, out), input flattened H,W,C",
    lambda w: w.reshape(FC6_SIZE, FC6_SIZE, -1, w.shape[1]),
    lambda s: (s[0] * s[1] * s[2], s[3]))


@dataclasses.dataclass(frozen=True)
class Entry:
    """Source key -> model parameter path, through ``transform``."""

    key: str
    path: Path
    transform: Transform


def source_layer(path: Path, spec: VariantSpec) -> str:
    """The reference's (Caffe's, pytorch-fcn's) name of the layer holding parameter ``path``: the model's
    layer name, renamed where the spec says (NYUD's ``conv1_1_bgrd``), with a late-fusion stream's suffix
    (``backbone_color/conv1_1`` -> ``conv1_1color``; head layers carry theirs already)."""
    layer = dict(spec.caffe_names).get(path[-2], path[-2])
    return layer + path[0][len("backbone_"):] if path[0].startswith("backbone_") else layer


def _fcn_table(param_shapes: Mapping[Path, tuple[int, ...]], spec: VariantSpec) -> list[Entry]:
    """pytorch-fcn and the reference's Caffe nets: every parameter ``.../layer/kernel|bias`` is
    ``<source_layer>.weight|bias``; kernels (conv and transposed conv alike) are (dim0, dim1, kh, kw)."""
    return [Entry(f"{source_layer(path, spec)}.{'weight' if path[-1] == 'kernel' else 'bias'}", path,
                  TORCH_CONV if len(shape) == 4 else AS_IS)
            for path, shape in param_shapes.items()]


def _vgg16_torch_table() -> list[Entry]:
    table = []
    for conv, index in zip(CONVS, TORCH_FEATURE_INDEX):
        table += [Entry(f"features.{index}.weight", ("backbone", conv, "kernel"), TORCH_CONV),
                  Entry(f"features.{index}.bias", ("backbone", conv, "bias"), AS_IS)]
    return table + [
        Entry("classifier.0.weight", ("backbone", "fc6", "kernel"), TORCH_LINEAR_CHW),
        Entry("classifier.0.bias", ("backbone", "fc6", "bias"), AS_IS),
        Entry("classifier.3.weight", ("backbone", "fc7", "kernel"), TORCH_LINEAR_1X1),
        Entry("classifier.3.bias", ("backbone", "fc7", "bias"), AS_IS)]


def _vgg16_keras_table() -> list[Entry]:
    table = []
    for conv in CONVS:
        layer = "block{}_conv{}".format(*conv[len("conv"):].split("_"))
        table += [Entry(f"{layer}/kernel", ("backbone", conv, "kernel"), AS_IS),
                  Entry(f"{layer}/bias", ("backbone", conv, "bias"), AS_IS)]
    return table + [
        Entry("fc1/kernel", ("backbone", "fc6", "kernel"), KERAS_DENSE_HWC),
        Entry("fc1/bias", ("backbone", "fc6", "bias"), AS_IS),
        Entry("fc2/kernel", ("backbone", "fc7", "kernel"), KERAS_DENSE_1X1),
        Entry("fc2/bias", ("backbone", "fc7", "bias"), AS_IS)]


# Keys a format carries that the model does not use (the 1000-way ImageNet classifier).
IGNORED = {FCN_FORMAT: (), VGG16_TORCH: ("classifier.6.weight", "classifier.6.bias"),
           VGG16_KERAS: ("predictions/kernel", "predictions/bias"), BACKBONE_FORMAT: ()}
# A key that only a file of that format has, checked in this order.
SIGNATURES = ((VGG16_TORCH, "features.0.weight"), (VGG16_KERAS, "block1_conv1/kernel"),
              (FCN_FORMAT, "conv1_1.weight"))


def _table(fmt: str, param_shapes: Mapping[Path, tuple[int, ...]], spec: VariantSpec) -> list[Entry]:
    if fmt == FCN_FORMAT:
        return _fcn_table(param_shapes, spec)
    if fmt == BACKBONE_FORMAT:
        return [Entry("/".join(path), path, AS_IS) for path in param_shapes if path[0] == "backbone"]
    return _vgg16_torch_table() if fmt == VGG16_TORCH else _vgg16_keras_table()


def param_shapes(variant: str, num_classes: int, width: float = 1.0) -> dict[Path, tuple[int, ...]]:
    """Shapes of the model's parameters by path (``('backbone', 'fc6', 'kernel')`` ...), without
    computing anything (``jax.eval_shape`` of the init)."""
    return {path[1:]: shape for path, shape in variable_shapes(variant, num_classes, width).items()
            if path[0] == "params"}


def variable_shapes(variant: str, num_classes: int, width: float = 1.0) -> dict[Path, tuple[int, ...]]:
    """Shapes of all the model's variables by path, collection first (``('params', 'backbone', 'conv1',
    'kernel')``, ``('batch_stats', 'backbone', 'bn1', 'mean')``), without computing anything."""
    model = _config(variant, num_classes, width).build()
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(input_shape(variant), jnp.float32))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(dict(shapes)).items()}


def _config(variant: str, num_classes: int, width: float) -> ModelConfig:
    try:
        return ModelConfig(variant=variant, num_classes=num_classes, width=width)
    except ValueError as e:
        raise WeightsError(str(e)) from None


# ----------------------------------------------------------------------------------------- reading files

def _torch_state_dict(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        import torch
    except ImportError:
        raise WeightsError(f"{path}: reading a .pth file needs PyTorch (pip install torch), or convert it "
                           f"to .npz / .safetensors elsewhere") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # weights_only refused what the pickle holds
        raise WeightsError(f"{path}: {_unpickling_reason(str(e))}") from None
    if isinstance(obj, Mapping):  # training checkpoints wrap the state dict
        for wrapper in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a PyTorch state dict (expected a mapping of names to tensors)")
    # floating tensors as float32 (NumPy has no bfloat16); others keep their dtype, which is then refused
    return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()).numpy()
            for k, v in obj.items()}, {}


def _unpickling_reason(message: str) -> str:
    """torch.load(weights_only=True)'s long refusal -> what the file is, in a few words."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message)
    if found:
        return (f"holds a pickled Python object ({found.group(1)}), not a state dict of tensors; save "
                f"model.state_dict() instead (fcn-jax never unpickles code)")
    detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", message)
    return f"cannot read as a .pth weights file (unpickling failed: {one_line(detail.group(1) if detail else message)})"


def one_line(text: str, limit: int = 160) -> str:
    """``text`` as one readable line: ANSI escapes dropped, whitespace collapsed, cut at a word boundary."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).split())
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + " ..."


def _npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with np.load(path, allow_pickle=False) as data:
        tensors = {k: data[k] for k in data.files}
    meta = {}
    if NPZ_PREPROCESSING_KEY in tensors:
        meta["preprocessing"] = str(tensors.pop(NPZ_PREPROCESSING_KEY))
    return tensors, meta


def _safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open
    with safe_open(path, framework="np") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, {k: v for k, v in meta.items() if k == SAFETENSORS_PREPROCESSING_KEY}


def _h5_names(group: Any, name: str) -> list[str]:
    """A Keras name-list attribute, also when Keras split it into ``name0``, ``name1``, ... chunks."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += list(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _keras_h5(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Keras ``save_weights`` HDF5: root attribute ``layer_names``; each layer group has ``weight_names``,
    paths relative to the group (Keras 2: ``f[layer][layer]['kernel:0']``; Keras 1: ``f[layer]['..._W:0']``).
    Full-model files keep the same under ``model_weights``. Returns ``{'layer/kernel', 'layer/bias'}``."""
    import h5py
    tensors = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        layers = _h5_names(root, "layer_names")
        if not layers:
            raise WeightsError(f"{path}: not a Keras 1/2 save_weights file (no 'layer_names' attribute)")
        for layer in layers:
            group = root[layer]
            arrays = {name: np.asarray(group[name]) for name in _h5_names(group, "weight_names")}
            ranks = sorted(a.ndim for a in arrays.values())
            if len(arrays) == 2 and ranks[0] == 1 and ranks[1] > 1:  # a kernel and its bias, by rank
                for a in arrays.values():
                    tensors[f"{layer}/{'bias' if a.ndim == 1 else 'kernel'}"] = a
            else:
                tensors.update({f"{layer}/{name.rsplit('/', 1)[-1].split(':')[0]}": a
                                for name, a in arrays.items()})
    return tensors, {}


# Caffe layers of the ImageNet VGG16 -> torchvision key prefixes (fc8, the 1000 classes, is ignored like classifier.6).
CAFFE_VGG16_KEYS = {**{conv: f"features.{index}" for conv, index in zip(CONVS, TORCH_FEATURE_INDEX)},
                    "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"}
ATONCE = "fcn8s-atonce"


def source_name(key: str, path: str) -> str:
    """How the file ``path`` names the array read as ``key``: the key itself, or for a ``.caffemodel``
    (whose blobs are read under pytorch-fcn / torchvision keys) its Caffe layer and blob, e.g. 'upscore.weight'
    -> 'layer upscore blob 0', 'features.0.bias' -> 'layer conv1_1 blob 1'."""
    if not path.lower().endswith(CAFFE_SUFFIXES) or "." not in key:
        return key
    prefix, blob = key.rsplit(".", 1)
    layer = {v: k for k, v in CAFFE_VGG16_KEYS.items()}.get(prefix, prefix)
    index = {"weight": "0", "bias": "1"}.get(blob, blob[len("blob"):] if blob.startswith("blob") else blob)
    return f"layer {layer} blob {index}"


def _caffe_keys(prefix: str, blobs: tuple[np.ndarray, ...]) -> dict[str, np.ndarray]:
    """A Caffe layer's blobs as ``prefix.weight``, ``prefix.bias`` (more blobs: ``prefix.blob2`` ...)."""
    names = ["weight", "bias"] + [f"blob{i}" for i in range(2, len(blobs))]
    return {f"{prefix}.{name}": blob for name, blob in zip(names, blobs)}


def _atonce_scales(layers: Mapping[str, Any], path: str) -> bool:
    """Whether the net is the reference's FCN-8s at once: its Scale layers ``scale_pool4`` / ``scale_pool3``
    hold the fixed factors the model applies (0.01, 0.0001); any other value cannot be represented."""
    skip = skip_specs(ATONCE)[0]
    expected = {f"scale_{name}": factor for name, factor in zip(skip.skips, skip.feature_scales)}
    present = [name for name in expected if name in layers]
    if not present:
        return False
    if len(present) != len(expected):
        raise WeightsError(f"{path}: Caffe FCN has {', '.join(present)} but not "
                           f"{', '.join(n for n in expected if n not in present)}; {ATONCE} scales both skips")
    for name, factor in expected.items():
        blobs = layers[name].blobs
        if len(blobs) != 1 or not np.allclose(blobs[0], np.float32(factor), rtol=1e-6, atol=0):
            raise WeightsError(f"{path}: Caffe layer {name} ({layers[name].type}) must be the constant {factor:g} "
                               f"of {ATONCE} (the model's fixed skip scale); found {len(blobs)} blob(s) with values "
                               f"in [{min(float(b.min()) for b in blobs):g}, {max(float(b.max()) for b in blobs):g}]")
    return True


def _caffemodel(path: str, width: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """A ``.caffemodel``: the FCN's layers as pytorch-fcn keys (``{layer}.weight`` / ``.bias``: Caffe and
    PyTorch share the conv and transposed-conv layouts), or a headless VGG16 as torchvision keys (fc6 / fc7
    InnerProduct (out, C*7*7) in C,H,W order; convolutionalised (out, C, 7, 7) ones are flattened back). The
    FCN-8s at-once's Scale layers are checked and dropped; an FCN-8s's metadata records ``variant`` (and
    ``variant_from``, why), fcn8s-atonce if those layers are there, fcn8s if not."""
    from fcn_jax import caffe
    try:
        net = caffe.read_net(path)
    except caffe.CaffeModelError as e:
        raise WeightsError(str(e)) from None
    layers = {layer.name: layer for layer in net.layers if layer.blobs}
    title = f"Caffe model {net.name!r}" if net.name else "Caffe model"
    tensors, meta = {}, {}
    if not any(name.startswith(("score", "upscore")) for name in layers) and "conv1_1" not in layers:
        for signature, backbone in IMAGENET_CAFFE_SIGNATURES:  # AlexNet / CaffeNet, GoogLeNet on ImageNet
            if signature in layers:
                module = importlib.import_module(f"fcn_jax.models.backbones.{backbone}")
                try:
                    params = module.caffe_imagenet_params({n: layer.blobs for n, layer in layers.items()},
                                                          width=width)
                except ValueError as e:
                    raise WeightsError(f"{path}: {title}: {e}") from None
                return {"/".join(p): v for p, v in params.items()}, {"backbone": backbone}
        found = ", ".join(f"{n} ({layer.type})" for n, layer in list(layers.items())[:8]) or "none"
        raise WeightsError(f"{path}: {title} is not an FCN (no score or upscore layer) nor an ImageNet VGG16 "
                           f"(conv1_1), AlexNet (conv1) or GoogLeNet (conv1/7x7_s2); layers with weights: {found}")
    if any(name.startswith(("score", "upscore")) for name in layers):  # an FCN head: pytorch-fcn keys
        atonce = _atonce_scales(layers, path)
        for name, layer in layers.items():
            if not (atonce and name.startswith("scale_")):
                tensors.update(_caffe_keys(name, layer.blobs))
        if atonce:  # the file tells fcn8s from fcn8s-atonce, whatever its name
            meta.update(variant=ATONCE, variant_from="it has the Scale layers scale_pool4, scale_pool3")
        elif "upscore8" in layers:
            meta.update(variant="fcn8s", variant_from="it has upscore8 and no Scale layers")
    else:
        for name, layer in layers.items():
            blobs = layer.blobs
            if name in ("fc6", "fc7", "fc8") and blobs and blobs[0].ndim == 4:  # convolutionalised already
                blobs = (blobs[0].reshape(blobs[0].shape[0], -1),) + blobs[1:]
            tensors.update(_caffe_keys(CAFFE_VGG16_KEYS.get(name, name), blobs))
    return tensors, meta


def read_tensors(path: str, width: float = 1.0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every array of a weights file by its source key, in the source's layout, plus the file's metadata
    (``{'preprocessing': ...}`` if it records one; a .caffemodel FCN-8s: ``variant``, ``variant_from``; an
    ImageNet AlexNet or GoogLeNet .caffemodel: ``backbone``, its arrays already the backbone's parameters at
    channel multiplier ``width``). Raises :class:`WeightsError` if unreadable."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    readers = {**dict.fromkeys(TORCH_SUFFIXES, _torch_state_dict), **dict.fromkeys(NPZ_SUFFIXES, _npz),
               **dict.fromkeys(SAFETENSORS_SUFFIXES, _safetensors), **dict.fromkeys(H5_SUFFIXES, _keras_h5),
               **dict.fromkeys(CAFFE_SUFFIXES, functools.partial(_caffemodel, width=width))}
    if suffix in NETWORK_SUFFIXES:
        raise WeightsError(f"{path}: a {suffix} file is a Caffe network definition, not weights; pass the "
                           f".caffemodel trained with it")
    if suffix not in readers:
        raise WeightsError(f"{path}: unknown weights file extension {suffix or '(none)'!r}; expected one of "
                           f"{', '.join(SUFFIXES)} or an fcn-jax checkpoint directory")
    try:
        return readers[suffix](path)
    except WeightsError:
        raise
    except Exception as e:  # torch, numpy, zipfile, h5py, safetensors and the OS raise their own kinds
        detail = one_line(str(e)) or type(e).__name__
        raise WeightsError(f"{path}: cannot read as a {suffix} weights file ({detail})") from None


def detect_format(keys: Any, path: str = "weights") -> str:
    """The format (one of :data:`FORMATS`: ``'fcn'``, ``'vgg16-torch'``, ``'vgg16-keras'``, the BatchNorm
    families' of :mod:`fcn_jax.weights_bn` ...) whose key names ``keys`` has."""
    from fcn_jax import weights_bn
    keys = set(keys)
    if keys and all(key.startswith("backbone/") for key in keys):
        return BACKBONE_FORMAT
    bn = weights_bn.detect(keys)
    if bn is not None:
        return bn
    for fmt, signature in SIGNATURES:
        if signature in keys:
            return fmt
    if any(key.startswith("score_fr") for key in keys):  # an FCN on another backbone or input
        return FCN_FORMAT
    found = ", ".join(sorted(keys)[:6]) or "no arrays"
    raise WeightsError(f"{path}: unrecognised weights: expected pytorch-fcn keys (conv1_1.weight, ...), "
                       f"torchvision VGG16 keys (features.0.weight, ...), Keras VGG16 layers "
                       f"(block1_conv1, ...), seed 002's VGG11-BN (backbone.conv1.weight, ...), torchvision's "
                       f"vgg11_bn (features.1.running_mean, ...), fcn_resnet50/101 (backbone.layer1.0.conv1.weight, "
                       f"...) or resnet50/101 (layer1.0.conv1.weight, ...); found {found}")


# ------------------------------------------------------------------------------------------- conversion

def _head_layers(spec: VariantSpec) -> frozenset[str]:
    """The names of a variant's score layers and upsamplers (every skip head, every stream)."""
    skips = [h.args for h in spec.heads if h.kind == "skip"]
    return frozenset(name for skip in skips for name in skip.score_names(spec.streams) + skip.upsampler_names())


@functools.lru_cache(maxsize=None)
def _variant_keys(variant: str) -> frozenset[str]:
    """Every ``fcn``-format key of a variant (the class count and width do not change the names)."""
    return frozenset(e.key for e in _fcn_table(param_shapes(variant, 2, 1 / 16), get_variant(variant)))


def _fcn_variant_of(keys: set[str], path: str) -> str | None:
    """The variant an FCN file is for: the one whose layer names the file has, exactly (the head layers
    first, then, among variants with the same head, every key: backbone and input differ). fcn8s and
    fcn8s-atonce have the same keys and are told apart by the file name (``*atonce*``)."""
    heads = {key.rsplit(".", 1)[0] for key in keys if key.startswith(("score", "upscore"))}
    found = [v for v in VARIANTS if v != "fcn8s-atonce" and skip_specs(v) and _head_layers(get_variant(v)) == heads]
    if len(found) > 1:
        found = [v for v in found if _variant_keys(v) == set(keys)]
    if len(found) != 1:
        return None
    if found[0] == "fcn8s" and "atonce" in os.path.basename(path).lower():
        return "fcn8s-atonce"
    return found[0]


def first_score_key(variant: str) -> str:
    """The ``fcn``-format key of the first head's (first stream's) ``score_fr`` weight: its rows are the
    classes."""
    spec, skips = get_variant(variant), skip_specs(variant)
    if not skips:
        raise WeightsError(f"pytorch-fcn weights are for the Caffe skip FCNs ({', '.join(_skip_variants())}); "
                           f"{variant} has no score_fr layer")
    return f"{skips[0].score_names(spec.streams)[0]}.weight"


def _skip_variants() -> list[str]:
    return [v for v in VARIANTS if skip_specs(v)]


def _detect_convention(fmt: str, path: str, file_meta: Mapping[str, str], variant: str | None = None,
                       num_classes: int | None = None) -> tuple[str, str]:
    """(convention, how it was decided) for a file; raises if it cannot be told. A Caffe FCN of a reference
    model of another dataset (SIFT Flow, NYUD, PASCAL-Context) takes that dataset's mean, as its data layer
    subtracted it."""
    if "preprocessing" in file_meta:
        try:
            return check_convention(file_meta["preprocessing"]), "file metadata"
        except ValueError as e:
            raise WeightsError(f"{path}: recorded preprocessing: {e}") from None
    if fmt in BN_FORMATS:
        from fcn_jax.weights_bn import CONVENTION_REASONS
        return TORCHVISION, CONVENTION_REASONS[fmt]
    if os.path.splitext(path)[1].lower() in CAFFE_SUFFIXES:
        from fcn_jax.models import zoo
        model = zoo.match(variant, num_classes) if fmt == FCN_FORMAT and variant and num_classes else None
        if model is not None and model.preprocessing != CAFFE:
            return model.preprocessing, f"Caffe model of {model.name} ({model.dataset}: its data layer's mean)"
        return CAFFE, "Caffe model (BGR, mean-subtracted input)"
    if fmt == FCN_FORMAT:
        return CAFFE, "pytorch-fcn weights are Caffe-converted"
    if fmt == VGG16_KERAS:
        return CAFFE, "Keras VGG16 weights are Caffe-converted (BGR)"
    name = os.path.basename(path).lower()
    if "caffe" in name:
        return CAFFE, "file name"
    if re.match(r"vgg16-[0-9a-f]{8}", name) or "torchvision" in name:
        return TORCHVISION, "file name"
    raise WeightsError(
        f"{path}: cannot tell whether these torchvision-layout VGG16 weights expect 'caffe' (BGR 0..255, like "
        f"vgg16_from_caffe.pth) or 'torchvision' (RGB, like vgg16-397923af.pth) input; pass convention=")


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _init_subset(config: ModelConfig, paths: list[Path]) -> dict[Path, np.ndarray]:
    """The model's own initial values of the parameters at ``paths`` only."""
    values = init_values(config, [("params",) + p for p in paths])
    return {p[1:]: v for p, v in values.items()}


def init_values(config: ModelConfig, paths: list[Path]) -> dict[Path, np.ndarray]:
    """The initial values (rng ``key(0)``) of ``config``'s model's variables at ``paths`` (``('params',
    'conv_out', 'kernel')``, ``('batch_stats', ...)``) only, as fresh NumPy arrays."""
    return {p: np.array(v) for p, v in _initial_values(config, tuple(paths)).items()}


@functools.lru_cache(maxsize=16)
def _initial_values(config: ModelConfig, paths: tuple[Path, ...]) -> dict[Path, np.ndarray]:
    """:func:`init_values`, compiled once per model and paths (jit drops the forward pass and the rest)."""
    model = config.build()

    def init(rng: jax.Array) -> dict[str, jax.Array]:
        flat = traverse_util.flatten_dict(dict(model.init(rng, jnp.zeros(input_shape(model.variant), jnp.float32))))
        return {"/".join(p): flat[p] for p in paths}
    values = jax.jit(init)(jax.random.key(0))
    return {p: np.asarray(values["/".join(p)]) for p in paths}


def _adapted_backbone(tensors: Mapping[str, Any], fmt: str, spec: VariantSpec, variant: str, num_classes: int,
                      width: float, path: str) -> dict[Path, np.ndarray]:
    """A VGG16 file for a variant whose input differs from its RGB VGG16: every stream's backbone is the
    file's VGG16 (late fusion), and an early-fusion conv1_1 reads the extra channel with the mean of the RGB
    filters over their input channels, as the reference's nyud-fcn32s-color-d/solve.py does."""
    base = traverse_util.flatten_dict(params_from_tensors(tensors, fmt, "fcn32s", num_classes, width, path))
    out = {}
    for target, shape in param_shapes(variant, num_classes, width).items():
        if not target[0].startswith("backbone"):
            continue
        value = base[("backbone",) + target[1:]]
        if value.shape != shape:  # conv1_1 (3, 3, 3, C) -> (3, 3, 3 + k, C)
            extra = np.repeat(value.mean(axis=2, keepdims=True), shape[2] - value.shape[2], axis=2)
            value = np.concatenate([value, extra], axis=2)
        out[target] = value
    return out


def params_from_tensors(tensors: Mapping[str, Any], fmt: str, variant: str, num_classes: int,
                        width: float = 1.0, path: str = "weights") -> dict[str, Any]:
    """Source arrays (keys and layouts of ``fmt``) -> the model's params tree (HWIO kernels, float32 NumPy).

    Every key the format needs must be present with the shape the model needs; keys the model does not
    use are an error (except the ImageNet classifier of VGG16 files). Layers a VGG16 or ImageNet backbone
    file lacks (score layers, upsamplers) take the model's initial values; a VGG16 file fills every stream
    of a late-fusion variant and the extra input channels of an early-fusion one (see
    :func:`_adapted_backbone`).
    """
    config = _config(variant, num_classes, width)
    spec = get_variant(variant)
    shapes = param_shapes(variant, num_classes, width)
    if fmt in (VGG16_TORCH, VGG16_KERAS) and (spec.in_channels != 3 or len(spec.streams) > 1):
        flat = _adapted_backbone(tensors, fmt, spec, variant, num_classes, width, path)
        flat.update(_init_subset(config, [p for p in shapes if p not in flat]))
        return traverse_util.unflatten_dict(flat)
    table = _table(fmt, shapes, spec)
    what = f"{variant} ({num_classes} classes, width {width:g})"

    def hint() -> str:
        if fmt != FCN_FORMAT:
            return ""
        actual = _fcn_variant_of(set(tensors), path)
        return f"; the file looks like {actual}" if actual and actual != variant else ""
    flat = table_arrays(tensors, table, shapes, fmt, what, path, ignored=IGNORED[fmt], hint=hint)
    rest = [p for p in shapes if p not in flat]
    if rest:
        flat.update(_init_subset(config, rest))
    return traverse_util.unflatten_dict(flat)


def table_arrays(tensors: Mapping[str, Any], table: list[Entry], shapes: Mapping[Path, tuple[int, ...]], fmt: str,
                 what: str, path: str, *, ignored: Any = (), hint: Callable[[], str] | None = None
                 ) -> dict[Path, np.ndarray]:
    """The arrays of ``table`` (source key -> target path in ``shapes``, the target shapes) from ``tensors``,
    in the target layout (float32 NumPy). Raises :class:`WeightsError` for keys the table needs that the file
    lacks and keys it has that neither the table nor ``ignored`` names (``hint()`` appended), non-float or
    non-finite arrays and shapes other than the target needs (each naming the keys; ``what`` is the model)."""
    keys, wanted = set(tensors), {e.key for e in table}
    name = functools.partial(source_name, path=path)
    missing = sorted(map(name, wanted - keys))
    unexpected = sorted(map(name, keys - wanted - set(ignored)))
    if missing or unexpected:
        parts = ([f"missing keys {', '.join(missing)}"] if missing else []) + (
            [f"unexpected keys {', '.join(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{path}: {fmt} weights do not fit {what}: {'; '.join(parts)}{hint() if hint else ''}")
    not_float = [f"{name(e.key)} is {np.asarray(tensors[e.key]).dtype}" for e in table
                 if not jnp.issubdtype(np.asarray(tensors[e.key]).dtype, jnp.floating)]
    if not_float:
        raise WeightsError(f"{path}: weights must be floating point: {'; '.join(not_float)}")
    bad = []
    for e in table:
        expected = tuple(e.transform.source_shape(shapes[e.path]))
        if tuple(tensors[e.key].shape) != expected:
            bad.append(f"{name(e.key)} has shape {_shape(tensors[e.key].shape)}, expected {_shape(expected)}")
    if bad:
        more = [f"and {len(bad) - SHOWN_SHAPES} more arrays of other shapes"] if len(bad) > SHOWN_SHAPES else []
        raise WeightsError(f"{path}: {fmt} weights do not fit {what}: {'; '.join(bad[:SHOWN_SHAPES] + more)}")
    broken = [f"{name(e.key)} ({int(np.size(t) - np.isfinite(t).sum())} of {np.size(t)} values)" for e in table
              if not np.isfinite(t := np.asarray(tensors[e.key], np.float32)).all()]
    if broken:
        raise WeightsError(f"{path}: non-finite values (NaN or inf) in {', '.join(broken)}")
    return {e.path: np.ascontiguousarray(e.transform.to_param(np.asarray(tensors[e.key])), np.float32)
            for e in table}


def load(path: str, variant: str | None = None, num_classes: int | None = None, *, width: float = 1.0,
         convention: str | None = None, default_variant: str | None = None,
         default_classes: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A weights file -> (variables (float32 NumPy, HWIO kernels), meta) for an FCN: ``{'params': tree}``, and
    for the BatchNorm formats of :mod:`fcn_jax.weights_bn` also ``'batch_stats'`` (the running statistics).

    ``path``: a pytorch-fcn / torchvision / Keras weights file (.pth, .pt, .npz, .safetensors, .h5), a Caffe
    .caffemodel (a reference FCN or the ImageNet VGG16), seed 002's VGG11-BN segmentation or classifier state
    dict, torchvision's vgg11_bn, fcn_resnet50/101 or resnet50/101.
    ``variant`` / ``num_classes``: what the caller needs; FCN files record both (by their final upsampler,
    fcn8s-atonce by 'atonce' in the file name, or in a .caffemodel by its Scale layers, and ``score_fr``; the
    seed's files and fcn_resnet50/101 by their keys), and a different request is an error. VGG16 files hold
    no head: they take ``variant`` or ``default_variant`` (required) and ``num_classes`` or ``default_classes``
    (else 21); vgg11_bn and resnet50/101 files likewise, their family's FCN if neither is given. ``width``: the
    channel multiplier the file is for. ``convention`` overrides the preprocessing decided from the format,
    the file's metadata or its name.
    ``meta``: ``model`` (config dict), ``preprocessing``, ``preprocessing_from``, ``format``, ``source``,
    ``initialised`` (the arrays the file does not hold, at the model's initialisation: a backbone file's
    heads, an fcn_resnet file's aux head without ``aux_classifier.*``; 'classifier/conv/kernel' for a
    parameter, 'batch_stats/aux_classifier/bn/mean' for a statistic).

    Raises :class:`WeightsError` naming the file and the offending keys and shapes.
    """
    try:
        if variant is not None:
            check_variant(variant)
        if convention is not None:
            check_convention(convention)
    except ValueError as e:
        raise WeightsError(str(e)) from None
    from fcn_jax import weights_bn
    path = os.fspath(path)
    tensors, file_meta = read_tensors(path, width)
    fmt = detect_format(tensors, path)
    if fmt in BN_FORMATS:
        variant, num_classes = weights_bn.resolve(tensors, fmt, path, variant, num_classes, default_variant,
                                                  default_classes)
    elif fmt == FCN_FORMAT:
        recorded = file_meta.get("variant")  # a .caffemodel's own word on fcn8s vs fcn8s-atonce
        if recorded and variant and variant != recorded:
            raise WeightsError(f"{path}: variant {variant} requested, but the file is {recorded} "
                               f"({file_meta.get('variant_from', 'recorded')})")
        found = recorded or _fcn_variant_of(set(tensors), path)
        if variant is None and found is None:
            heads = sorted({key.rsplit(".", 1)[0] for key in tensors if key.startswith(("score", "upscore"))})
            raise WeightsError(f"{path}: cannot tell the FCN variant: no variant has exactly its layers (score "
                               f"and upsampling layers: {', '.join(heads) or 'none'}); pass variant=")
        variant = variant or found
        score = first_score_key(variant)
        if score in tensors:
            file_classes = int(tensors[score].shape[0])
            if num_classes is not None and num_classes != file_classes:
                raise WeightsError(f"{path}: num_classes {num_classes} requested, but the weights have "
                                   f"{file_classes} classes ({score} has shape "
                                   f"{_shape(tensors[score].shape)})")
            num_classes = file_classes
    else:
        backbone = file_meta.get("backbone", "vgg16")
        variant = variant or default_variant
        if variant is None:
            raise WeightsError(f"{path}: ImageNet {backbone} weights hold no FCN head; pass variant= (one of "
                               f"{', '.join(v for v in VARIANTS if get_variant(v).backbone == backbone)})")
        if get_variant(variant).backbone != backbone:
            raise WeightsError(f"{path}: ImageNet {backbone} weights cannot start {variant}, whose backbone is "
                               f"{get_variant(variant).backbone}")
        num_classes = num_classes or default_classes
    num_classes = VGG16_DEFAULT_CLASSES if num_classes is None else num_classes
    detected, how = (_detect_convention(fmt, path, file_meta, variant, num_classes) if convention is None
                     else (convention, "argument"))
    if fmt in BN_FORMATS:
        variables, initialised = weights_bn.variables_from_tensors(tensors, fmt, variant, num_classes, width, path)
    else:
        variables = {"params": params_from_tensors(tensors, fmt, variant, num_classes, width, path)}
        initialised = [("params",) + p for p in traverse_util.flatten_dict(variables["params"])
                       if fmt != FCN_FORMAT and not p[0].startswith("backbone")]  # a backbone file's heads
    kept = sorted({p[1] for p in initialised})
    meta = {"model": to_dict(_config(variant, num_classes, width)), "preprocessing": detected,
            "preprocessing_from": how, "format": fmt, "source": os.path.abspath(path),
            "initialised": ["/".join(p[1:] if p[0] == "params" else p) for p in initialised]}
    log.info("loaded %s weights from %s for %s (%d classes), preprocessing %s (%s); %s", fmt, path, variant,
             num_classes, detected, how, f"not in the file, at their initialisation: {', '.join(kept)}" if kept
             else "every layer from the file")
    return variables, meta


__all__ = ["BN_FORMATS", "FORMATS", "SUFFIXES", "WeightsError", "detect_format", "init_values", "load", "param_shapes",
           "params_from_tensors", "read_tensors", "table_arrays", "variable_shapes"]
