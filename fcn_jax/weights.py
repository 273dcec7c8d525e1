"""Foreign weights -> flax variables for :class:`fcn_jax.models.FCN`, with their preprocessing convention.

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

Containers: ``.pth`` / ``.pt`` (``torch.load``; needs torch), ``.npz`` and ``.safetensors`` (the same key
names and PyTorch / Keras layouts as the source, so no torch is needed), ``.h5`` / ``.hdf5`` (Keras
``save_weights`` layout), and fcn-jax Orbax model checkpoint directories.

The model's parameters are NHWC-style: conv kernels HWIO, fc6 a (7, 7, C, 4096) conv, fc7 (1, 1, 4096, 4096),
upsamplers (k, k, C, C) for ``lax.conv_transpose(..., transpose_kernel=True)``. VGG16 sources fill the
backbone; the heads keep the model's own initialisation (score layers zero, upsamplers bilinear).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from fcn_jax import checkpoint
from fcn_jax.config import ModelConfig, to_dict
from fcn_jax.models import VARIANTS, VGG16_BLOCKS, upsampler_names
from fcn_jax.preprocess import CAFFE, CONVENTIONS, TORCHVISION

log = logging.getLogger(__name__)

FCN_FORMAT = "fcn"
VGG16_TORCH = "vgg16-torch"
VGG16_KERAS = "vgg16-keras"
FORMATS = (FCN_FORMAT, VGG16_TORCH, VGG16_KERAS)
CHECKPOINT_FORMAT = "checkpoint"

TORCH_SUFFIXES = (".pth", ".pt")
NPZ_SUFFIXES = (".npz",)
SAFETENSORS_SUFFIXES = (".safetensors",)
H5_SUFFIXES = (".h5", ".hdf5")
SUFFIXES = TORCH_SUFFIXES + NPZ_SUFFIXES + SAFETENSORS_SUFFIXES + H5_SUFFIXES

# Optional preprocessing tag carried by converted files: npz key / safetensors metadata key.
NPZ_PREPROCESSING_KEY = "__preprocessing__"
SAFETENSORS_PREPROCESSING_KEY = "preprocessing"

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


def _fcn_table(param_shapes: Mapping[Path, tuple[int, ...]]) -> list[Entry]:
    """pytorch-fcn: the model's layer names are pytorch-fcn's, so every parameter ``.../layer/kernel|bias``
    is ``layer.weight|bias``; kernels (conv and transposed conv alike) are PyTorch (dim0, dim1, kh, kw)."""
    return [Entry(f"{path[-2]}.{'weight' if path[-1] == 'kernel' else 'bias'}", path,
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
           VGG16_KERAS: ("predictions/kernel", "predictions/bias")}
# A key that only a file of that format has, checked in this order.
SIGNATURES = ((VGG16_TORCH, "features.0.weight"), (VGG16_KERAS, "block1_conv1/kernel"),
              (FCN_FORMAT, "conv1_1.weight"))


def _table(fmt: str, param_shapes: Mapping[Path, tuple[int, ...]]) -> list[Entry]:
    if fmt == FCN_FORMAT:
        return _fcn_table(param_shapes)
    return _vgg16_torch_table() if fmt == VGG16_TORCH else _vgg16_keras_table()


def param_shapes(variant: str, num_classes: int, width: float = 1.0) -> dict[Path, tuple[int, ...]]:
    """Shapes of the model's parameters by path (``('backbone', 'fc6', 'kernel')`` ...), without
    computing anything (``jax.eval_shape`` of the init)."""
    model = _config(variant, num_classes, width).build()
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    return {path: tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes["params"]).items()}


def source_layout(fmt: str, variant: str = "fcn32s", num_classes: int = 21,
                  width: float = 1.0) -> dict[str, tuple[int, ...]]:
    """The keys and shapes (in the source's own layout) a file of format ``fmt`` must hold for the model.

    E.g. ``source_layout('vgg16-torch')['classifier.0.weight'] == (4096, 25088)``. Ignored keys (the
    ImageNet classifier) are not listed.
    """
    if fmt not in FORMATS:
        raise WeightsError(f"unknown weights format {fmt!r}; expected one of {FORMATS}")
    shapes = param_shapes(variant, num_classes, width)
    return {e.key: tuple(e.transform.source_shape(shapes[e.path])) for e in _table(fmt, shapes)}


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
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):  # training checkpoints wrap the state dict
        for wrapper in ("model_state_dict", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a PyTorch state dict (expected a mapping of names to tensors)")
    return {k: v.detach().cpu().float().numpy() for k, v in obj.items()}, {}


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


def read_tensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every array of a weights file by its source key, in the source's layout, plus the file's metadata
    (``{'preprocessing': ...}`` if it records one). Raises :class:`WeightsError` if unreadable."""
    if not os.path.exists(path):
        raise WeightsError(f"{path}: no such file")
    suffix = os.path.splitext(path)[1].lower()
    readers = {**dict.fromkeys(TORCH_SUFFIXES, _torch_state_dict), **dict.fromkeys(NPZ_SUFFIXES, _npz),
               **dict.fromkeys(SAFETENSORS_SUFFIXES, _safetensors), **dict.fromkeys(H5_SUFFIXES, _keras_h5)}
    if suffix not in readers:
        raise WeightsError(f"{path}: unknown weights file extension {suffix or '(none)'!r}; expected one of "
                           f"{', '.join(SUFFIXES)} or an fcn-jax checkpoint directory")
    try:
        return readers[suffix](path)
    except WeightsError:
        raise
    except Exception as e:  # torch, numpy, zipfile, h5py and safetensors raise their own kinds
        detail = " ".join(str(e).split()) or type(e).__name__
        raise WeightsError(f"{path}: cannot read as a {suffix} weights file ({detail[:200]})") from None


def detect_format(keys: Any, path: str = "weights") -> str:
    """The format (``'fcn'``, ``'vgg16-torch'`` or ``'vgg16-keras'``) whose key names ``keys`` has."""
    keys = set(keys)
    for fmt, signature in SIGNATURES:
        if signature in keys:
            return fmt
    found = ", ".join(sorted(keys)[:6]) or "no arrays"
    raise WeightsError(f"{path}: unrecognised weights: expected pytorch-fcn keys (conv1_1.weight, ...), "
                       f"torchvision VGG16 keys (features.0.weight, ...) or Keras VGG16 layers "
                       f"(block1_conv1, ...); found {found}")


# ------------------------------------------------------------------------------------------- conversion

def _fcn_variant_of(keys: set[str], path: str) -> str | None:
    """The variant a pytorch-fcn file is for, by its final upsampler; fcn8s and fcn8s-atonce have the same
    keys and are told apart by the file name (``*atonce*``)."""
    final = {f"{upsampler_names(v)[-1]}.weight": v for v in VARIANTS if v != "fcn8s-atonce"}
    found = [v for key, v in final.items() if key in keys]
    if len(found) != 1:
        return None
    if found[0] == "fcn8s" and "atonce" in os.path.basename(path).lower():
        return "fcn8s-atonce"
    return found[0]


def _detect_convention(fmt: str, path: str, file_meta: Mapping[str, str]) -> tuple[str, str]:
    """(convention, how it was decided) for a file; raises if it cannot be told."""
    if "preprocessing" in file_meta:
        return _check_convention(file_meta["preprocessing"], f"{path}: recorded preprocessing"), "file metadata"
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


def _check_convention(convention: str, what: str) -> str:
    if convention not in CONVENTIONS:
        raise WeightsError(f"{what}: unknown preprocessing convention {convention!r}; expected one of {CONVENTIONS}")
    return convention


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ")"


def _init_subset(model: Any, paths: list[Path]) -> dict[Path, np.ndarray]:
    """The model's own initial values of ``paths`` only (jit drops the forward pass and the rest)."""
    def init(rng: jax.Array) -> dict[str, jax.Array]:
        flat = traverse_util.flatten_dict(model.init(rng, jnp.zeros((1, 32, 32, 3), jnp.float32))["params"])
        return {"/".join(p): flat[p] for p in paths}
    values = jax.jit(init)(jax.random.key(0))
    return {p: np.asarray(values["/".join(p)]) for p in paths}


def params_from_tensors(tensors: Mapping[str, Any], fmt: str, variant: str, num_classes: int,
                        width: float = 1.0, path: str = "weights") -> dict[str, Any]:
    """Source arrays (keys and layouts of ``fmt``) -> the model's params tree (HWIO kernels, float32 NumPy).

    Every key the format needs must be present with the shape the model needs; keys the model does not
    use are an error (except the ImageNet classifier of VGG16 files). Layers a VGG16 file lacks (score
    layers, upsamplers) take the model's initial values.
    """
    config = _config(variant, num_classes, width)
    shapes = param_shapes(variant, num_classes, width)
    table = _table(fmt, shapes)
    keys, wanted = set(tensors), {e.key for e in table}
    missing = sorted(wanted - keys)
    unexpected = sorted(keys - wanted - set(IGNORED[fmt]))
    what = f"{variant} ({num_classes} classes, width {width:g})"
    if missing or unexpected:
        hint = ""
        if fmt == FCN_FORMAT:
            actual = _fcn_variant_of(keys, path)
            hint = f"; the file looks like {actual}" if actual and actual != variant else ""
        parts = ([f"missing keys {', '.join(missing)}"] if missing else []) + (
            [f"unexpected keys {', '.join(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{path}: {fmt} weights do not fit {what}: {'; '.join(parts)}{hint}")
    bad = []
    for e in table:
        expected = tuple(e.transform.source_shape(shapes[e.path]))
        if tuple(tensors[e.key].shape) != expected:
            bad.append(f"{e.key} has shape {_shape(tensors[e.key].shape)}, expected {_shape(expected)}")
    if bad:
        raise WeightsError(f"{path}: {fmt} weights do not fit {what}: {'; '.join(bad)}")
    flat = {e.path: np.ascontiguousarray(e.transform.to_param(np.asarray(tensors[e.key])), np.float32)
            for e in table}
    rest = [p for p in shapes if p not in flat]
    if rest:
        flat.update(_init_subset(config.build(), rest))
    return traverse_util.unflatten_dict(flat)


def _load_checkpoint(path: str, variant: str | None, num_classes: int | None, width: float,
                     convention: str | None, step: str | int) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        variables, meta = checkpoint.load_model(path, step)
    except checkpoint.CheckpointError as e:
        raise WeightsError(str(e)) from None
    saved = meta.get("model", {})
    requested = {"variant": variant, "num_classes": num_classes, "width": None if width == 1.0 else width,
                 "preprocessing": convention}
    recorded = {**saved, "preprocessing": meta.get("preprocessing")}
    clashes = [f"{k} {v!r} requested, checkpoint has {recorded.get(k)!r}"
               for k, v in requested.items() if v is not None and v != recorded.get(k)]
    if clashes:
        raise WeightsError(f"{path}: checkpoint does not fit: {'; '.join(clashes)}")
    return variables, dict(meta, format=CHECKPOINT_FORMAT)


def load_weights(path: str, variant: str | None = None, num_classes: int | None = None, *,
                 width: float = 1.0, convention: str | None = None, return_meta: bool = False,
                 step: str | int = "best") -> Any:
    """Flax variables ``{'params': ...}`` (float32 NumPy arrays, HWIO kernels) for an FCN from a file.

    Args:
      path: a pytorch-fcn / torchvision / Keras weights file (.pth, .pt, .npz, .safetensors, .h5) or an
        fcn-jax checkpoint directory (model checkpoint or training workdir).
      variant: 'fcn32s' | 'fcn16s' | 'fcn8s' | 'fcn8s-atonce'. Inferred from pytorch-fcn files (by the
        final upsampler; fcn8s-atonce by 'atonce' in the file name) and checkpoints; required for VGG16.
      num_classes: inferred from pytorch-fcn files (``score_fr``) and checkpoints; 21 for VGG16 files.
      width: channel multiplier of the model the file is for (1.0 = the real network; reduced widths are
        for tests and demos). Checkpoints record their own; a value other than 1.0 is checked against it.
      convention: 'caffe' | 'torchvision' preprocessing, overriding what is decided from the file's
        format, metadata or name; it must agree with what a checkpoint records.
      return_meta: also return ``meta`` (``model`` config dict, ``preprocessing``, ``format``, ``source``).
      step: for checkpoint directories, 'best', 'latest' or a step number.

    Raises:
      WeightsError: unreadable file, unknown format, or keys / shapes that do not fit the requested model
        (the message names the keys and both shapes).
    """
    if variant is not None and variant not in VARIANTS:
        raise WeightsError(f"unknown FCN variant {variant!r}; expected one of {VARIANTS}")
    if convention is not None:
        _check_convention(convention, "convention")
    path = os.fspath(path)
    if os.path.isdir(path):
        variables, meta = _load_checkpoint(path, variant, num_classes, width, convention, step)
        return (variables, meta) if return_meta else variables
    tensors, file_meta = read_tensors(path)
    fmt = detect_format(tensors, path)
    if fmt == FCN_FORMAT:
        found = _fcn_variant_of(set(tensors), path)
        if variant is None and found is None:
            raise WeightsError(f"{path}: cannot tell the FCN variant (no single upscore, upscore16 or "
                               f"upscore8 weight); pass variant=")
        variant = variant or found
        if "score_fr.weight" in tensors:
            file_classes = int(tensors["score_fr.weight"].shape[0])
            if num_classes is not None and num_classes != file_classes:
                raise WeightsError(f"{path}: num_classes {num_classes} requested, but the weights have "
                                   f"{file_classes} classes (score_fr.weight has shape "
                                   f"{_shape(tensors['score_fr.weight'].shape)})")
            num_classes = file_classes
    elif variant is None:
        raise WeightsError(f"{path}: VGG16 weights hold no FCN head; pass variant= (one of {VARIANTS})")
    num_classes = VGG16_DEFAULT_CLASSES if num_classes is None else num_classes
    detected, how = _detect_convention(fmt, path, file_meta) if convention is None else (convention, "argument")
    params = params_from_tensors(tensors, fmt, variant, num_classes, width, path)
    meta = {"model": to_dict(_config(variant, num_classes, width)), "preprocessing": detected,
            "preprocessing_from": how, "format": fmt, "source": os.path.abspath(path)}
    log.info("loaded %s weights from %s for %s (%d classes), preprocessing %s (%s)",
             fmt, path, variant, num_classes, detected, how)
    variables = {"params": params}
    return (variables, meta) if return_meta else variables


# ----------------------------------------------------------------------------------------- staged training

def _unwrap(tree: Mapping[str, Any]) -> tuple[Mapping[str, Any], bool]:
    wrapped = set(tree) == {"params"}
    return (tree["params"] if wrapped else tree), wrapped


def init_from_stage(target_params: Mapping[str, Any], source_params: Mapping[str, Any], *,
                    return_report: bool = False) -> Any:
    """Initialise the next stage of the reference's staged training (fcn32s -> fcn16s -> fcn8s).

    ``target_params``: the new model's initial params (e.g. fcn16s from ``model.init``);
    ``source_params``: the trained previous stage's. Both may also be ``{'params': ...}`` variables (the
    result is wrapped like ``target_params``). Every array whose path exists in both with equal shape is
    copied (backbone, ``score_fr``, ``upscore2`` from fcn16s to fcn8s); the others keep their initial values
    (new skip layers zero, new upsamplers bilinear). Returns the params, or ``(params, report)`` with
    ``return_report``, report = ``{'copied': [...], 'kept': [...], 'unused': [...]}`` ('a/b/kernel' paths).

    Raises WeightsError if the source's backbone does not match the target's (missing or other shapes).
    """
    target, wrapped = _unwrap(target_params)
    source, _ = _unwrap(source_params)
    tflat, sflat = traverse_util.flatten_dict(dict(target)), traverse_util.flatten_dict(dict(source))
    bad = [f"{'/'.join(p)} {'missing' if p not in sflat else f'has shape {_shape(sflat[p].shape)}'}"
           f" (target {_shape(v.shape)})"
           for p, v in tflat.items()
           if p[0] == "backbone" and (p not in sflat or tuple(sflat[p].shape) != tuple(v.shape))]
    if bad:
        raise WeightsError(f"source params do not match the target's backbone: {'; '.join(bad)}")
    out, copied, kept = {}, [], []
    for p, v in tflat.items():
        if p in sflat and tuple(sflat[p].shape) == tuple(v.shape):
            out[p] = sflat[p] if sflat[p].dtype == v.dtype else sflat[p].astype(v.dtype)
            copied.append("/".join(p))
        else:
            out[p] = v
            kept.append("/".join(p))
    unused = ["/".join(p) for p in sflat if p not in tflat]
    log.info("stage init: copied %d arrays; kept at init: %s; unused from source: %s",
             len(copied), ", ".join(kept) or "none", ", ".join(unused) or "none")
    params = traverse_util.unflatten_dict(out)
    result = {"params": params} if wrapped else params
    return (result, {"copied": copied, "kept": kept, "unused": unused}) if return_report else result


__all__ = ["FORMATS", "WeightsError", "detect_format", "init_from_stage", "load_weights", "param_shapes",
           "params_from_tensors", "read_tensors", "source_layout"]
