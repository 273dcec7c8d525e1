"""Input conventions: how uint8 RGB images become the network's float input; the void label.

Two conventions exist, and the one a set of weights was trained with travels with those weights
(converted files and checkpoints record it); nothing here guesses.

- ``caffe``: RGB -> BGR, float 0..255, subtract the BGR mean (104.00699, 116.66877, 122.67892).
  The reference FCN weights and the Caffe-converted VGG16 use it.
- ``torchvision``: RGB / 255, subtract mean (0.485, 0.456, 0.406), divide by std (0.229, 0.224, 0.225).

In both, the image's mean colour maps to (about) zero, so padding a *preprocessed* image with 0 is
padding with the mean colour, as Caffe's zero padding of a mean-subtracted input is.
"""
from __future__ import annotations

from typing import Any

import numpy as np

VOID = 255  # the label of ignored pixels (object boundaries, unlabelled areas, padding)

CAFFE = "caffe"
TORCHVISION = "torchvision"
CONVENTIONS = (CAFFE, TORCHVISION)

CAFFE_MEAN_BGR = (104.00699, 116.66877, 122.67892)
TORCHVISION_MEAN_RGB = (0.485, 0.456, 0.406)
TORCHVISION_STD_RGB = (0.229, 0.224, 0.225)


def check_convention(convention: str) -> str:
    """Returns ``convention`` if known, else raises ValueError naming the choices."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown preprocessing convention {convention!r}; expected one of {CONVENTIONS}")
    return convention


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
    if convention == CAFFE:
        return x[..., ::-1] - xp.asarray(CAFFE_MEAN_BGR, xp.float32)
    mean = xp.asarray(TORCHVISION_MEAN_RGB, xp.float32)
    std = xp.asarray(TORCHVISION_STD_RGB, xp.float32)
    return (x / 255.0 - mean) / std


def deprocess(x: Any, convention: str = CAFFE) -> np.ndarray:
    """Inverse of :func:`preprocess`: float network input (..., H, W, 3) -> uint8 RGB."""
    check_convention(convention)
    x = np.asarray(x, np.float32)
    if convention == CAFFE:
        rgb = (x + np.asarray(CAFFE_MEAN_BGR, np.float32))[..., ::-1]
    else:
        rgb = (x * np.asarray(TORCHVISION_STD_RGB, np.float32) + np.asarray(TORCHVISION_MEAN_RGB, np.float32)) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
