"""Input conventions: how an example's uint8 fields become the network's float input; the void label.

Colour conventions (``convention``; the one a set of weights was trained with travels with those
weights: converted files and checkpoints record it; nothing here guesses):

- ``caffe``: RGB -> BGR, float 0..255, subtract the BGR mean (104.00699, 116.66877, 122.67892) (voc_layers.py).
  The reference FCN weights and the Caffe-converted VGG16 use it.
- ``caffe-context``: the same with pascalcontext_layers.py's mean (104.007, 116.669, 122.679).
- ``caffe-siftflow``: the same with siftflow_layers.py's mean (114.578, 115.294, 108.353).
- ``caffe-nyud``: the same with nyud_layers.py's ``mean_bgr`` (116.190, 97.203, 92.318).
- ``torchvision``: RGB / 255, subtract mean (0.485, 0.456, 0.406), divide by std (0.229, 0.224, 0.225).

The ``caffe*`` conventions form one family (:func:`convention_family`): BGR 0..255 minus a mean, so
weights of one start training in another (the reference starts SIFT Flow and NYUD from the VGG16 of
the ImageNet mean).

NYUD's other modalities (nyud_layers.py), whatever the colour convention:

- HHA (``hha``, uint8 x3): float, minus :data:`MEAN_HHA`, channels as stored (not flipped).
- depth (``depth``, uint16 millimetres): ``log(depth) - 7.844`` (natural log, :data:`MEAN_LOG_DEPTH`).
  A depth of 0 (no measurement) becomes 0, the mean, where the reference's formula gives -inf
  (the reference's depth maps are filled in and have no zeros).

Network inputs (``inputs``, :data:`INPUTS`): which example fields form the input, concatenated in
channel order (:func:`compose`): ``image`` (3), ``hha`` (3), ``image+depth`` (4: BGR then log depth, Caffe's
``Concat(color, depth)`` of nyud-fcn32s-color-d), ``image+hha`` (6: colour then HHA, the late-fusion
nyud-fcn32s-color-hha's two streams). :func:`fcn_jax.models.resolve_inputs` checks them against a variant's
input channels. What each output learns from is the model's (:class:`fcn_jax.models.Output`).

In every convention the mean maps to (about) zero, so padding a *preprocessed* input with 0 is
padding with the mean, as Caffe's zero padding of a mean-subtracted input is.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

VOID = 255  # the label of ignored pixels (object boundaries, unlabelled areas, padding)

CAFFE = "caffe"
TORCHVISION = "torchvision"
CAFFE_CONTEXT = "caffe-context"
CAFFE_SIFTFLOW = "caffe-siftflow"
CAFFE_NYUD = "caffe-nyud"
CONVENTIONS = (CAFFE, TORCHVISION, CAFFE_CONTEXT, CAFFE_SIFTFLOW, CAFFE_NYUD)

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)
# The reference's data layers' BGR means (pascalcontext_layers.py, siftflow_layers.py, nyud_layers.py), as
# fcn_jax.data.pascal_context / sift_flow / nyud record them (tests check that they agree).
CAFFE_MEANS: Mapping[str, tuple[float, float, float]] = {
    CAFFE: CAFFE_MEAN_BGR,
    CAFFE_CONTEXT: (104.007, 116.669, 122.679),
    CAFFE_SIFTFLOW: (114.578, 115.294, 108.353),
    CAFFE_NYUD: (116.190, 97.203, 92.318),
}
MEAN_HHA = (132.431, 94.076, 118.477)  # nyud_layers.py mean_hha, in the stored channel order
MEAN_LOG_DEPTH = 7.844  # nyud_layers.py mean_logd
# The convention of each dataset's reference data layer (the dataset name before any '/config').
DATASET_CONVENTIONS: Mapping[str, str] = {"voc_segmentation": CAFFE, "pascal_context": CAFFE_CONTEXT,
                                          "sift_flow": CAFFE_SIFTFLOW, "nyud": CAFFE_NYUD}

IMAGE, HHA, DEPTH = "image", "hha", "depth"
INPUTS = (IMAGE, HHA, "image+depth", "image+hha")
FIELD_CHANNELS: Mapping[str, int] = {IMAGE: 3, HHA: 3, DEPTH: 1}


def check_convention(convention: str) -> str:
    """Returns ``convention`` if known, else raises ValueError naming the choices."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown preprocessing convention {convention!r}; expected one of {CONVENTIONS}")
    return convention


def convention_family(convention: str) -> str:
    """'caffe' for every BGR-minus-a-mean convention, else the convention itself."""
    return CAFFE if check_convention(convention) in CAFFE_MEANS else convention


def dataset_convention(dataset: str) -> str | None:
    """The colour convention of ``dataset``'s reference data layer ('sift_flow' -> 'caffe-siftflow'), or None."""
    return DATASET_CONVENTIONS.get(dataset.partition("/")[0])


def _xp(x: Any):
    return np if isinstance(x, np.ndarray) else __import__("jax.numpy", fromlist=["numpy"])


def preprocess(images: Any, convention: str = CAFFE) -> Any:
    """uint8 RGB images (..., H, W, 3) -> float32 network input (..., H, W, 3), NHWC.

    Works on NumPy arrays (returns NumPy) and on jax arrays (returns jax arrays, jit-friendly). NumPy
    floats that all lie in 0..1 are refused (ValueError): they are almost surely images scaled to 0..1.
    """
    check_convention(convention)
    xp = _xp(images)
    if images.shape[-1] != 3:
        raise ValueError(f"expected RGB images with 3 channels last, got shape {tuple(images.shape)}")
    if xp is np and np.issubdtype(images.dtype, np.floating) and images.size and 0 <= images.min() <= images.max() <= 1:
        raise ValueError(f"preprocess expects RGB values in 0..255 (uint8, or floats on that scale); these floats "
                         f"lie in [{float(images.min()):g}, {float(images.max()):g}], which looks like 0..1: "
                         f"multiply by 255 first")
    x = images.astype(xp.float32)
    if convention in CAFFE_MEANS:
        return x[..., ::-1] - xp.asarray(CAFFE_MEANS[convention], xp.float32)
    mean = xp.asarray(TORCHVISION_MEAN_RGB, xp.float32)
    std = xp.asarray(TORCHVISION_STD_RGB, xp.float32)
    return (x / 255.0 - mean) / std


def preprocess_hha(hha: Any) -> Any:
    """uint8 HHA (..., H, W, 3) -> float32 (..., H, W, 3): minus :data:`MEAN_HHA`, channels not flipped."""
    xp = _xp(hha)
    if hha.shape[-1] != 3:
        raise ValueError(f"expected HHA with 3 channels last, got shape {tuple(hha.shape)}")
    return hha.astype(xp.float32) - xp.asarray(MEAN_HHA, xp.float32)


def preprocess_depth(depth: Any) -> Any:
    """uint16 depth in millimetres (..., H, W) -> float32 log depth (..., H, W, 1): ``log(d) - 7.844``,
    0 where the depth is 0 (missing)."""
    xp = _xp(depth)
    d = depth.astype(xp.float32)
    positive = d > 0
    log_depth = xp.log(xp.where(positive, d, xp.float32(1))) - xp.float32(MEAN_LOG_DEPTH)
    return xp.where(positive, log_depth, xp.float32(0))[..., None]


def input_fields(inputs: str) -> tuple[str, ...]:
    """The example fields an ``inputs`` value reads, in channel order ('image+hha' -> ('image', 'hha'))."""
    check_inputs(inputs)
    return tuple(inputs.split("+"))


def check_inputs(inputs: str) -> str:
    """Returns ``inputs`` if it is one of :data:`INPUTS`, else raises ValueError naming them."""
    if inputs not in INPUTS:
        raise ValueError(f"unknown inputs {inputs!r}; expected one of {INPUTS}")
    return inputs


def input_channels(inputs: str) -> int:
    """The channels of the network input ``inputs`` composes (image 3, hha 3, depth 1, summed)."""
    return sum(FIELD_CHANNELS[f] for f in input_fields(inputs))


def compose(fields: Mapping[str, Any], inputs: str = IMAGE, convention: str = CAFFE) -> Any:
    """Example fields -> float32 network input (..., H, W, C), C = :func:`input_channels`.

    ``fields``: 'image' uint8 RGB (..., H, W, 3), 'hha' uint8 (..., H, W, 3), 'depth' uint16 (..., H, W),
    those ``inputs`` names; NumPy or jax arrays. The colour image follows ``convention``, HHA and depth
    the reference's NYUD preprocessing; the parts are concatenated in the order ``inputs`` lists them.
    """
    makers = {IMAGE: lambda x: preprocess(x, convention), HHA: preprocess_hha, DEPTH: preprocess_depth}
    names = input_fields(inputs)
    missing = [n for n in names if n not in fields]
    if missing:
        raise ValueError(f"inputs {inputs!r} need the field(s) {', '.join(missing)}; got {', '.join(fields)}")
    parts = [makers[name](fields[name]) for name in names]
    return parts[0] if len(parts) == 1 else _xp(parts[0]).concatenate(parts, axis=-1)


def deprocess(x: Any, convention: str = CAFFE) -> np.ndarray:
    """Inverse of :func:`preprocess`: float network input (..., H, W, 3) -> uint8 RGB."""
    check_convention(convention)
    x = np.asarray(x, np.float32)
    if convention in CAFFE_MEANS:
        rgb = (x + np.asarray(CAFFE_MEANS[convention], np.float32))[..., ::-1]
    else:
        rgb = (x * np.asarray(TORCHVISION_STD_RGB, np.float32) + np.asarray(TORCHVISION_MEAN_RGB, np.float32)) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def display_image(x: Any, convention: str = CAFFE, inputs: str = IMAGE) -> np.ndarray:
    """A composed input (..., H, W, C) -> uint8 (..., H, W, 3) to look at: the colour image where the input
    has one (its first three channels), else the HHA channels shown as RGB."""
    x = np.asarray(x, np.float32)
    if input_fields(inputs)[0] == IMAGE:
        return deprocess(x[..., :3], convention)
    return np.clip(np.rint(x[..., :3] + np.asarray(MEAN_HHA, np.float32)), 0, 255).astype(np.uint8)
