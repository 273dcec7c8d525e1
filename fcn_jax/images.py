"""Reading image files: any format PIL reads -> (H, W, 3) uint8 RGB, upright. No jax here, so the data
readers (:mod:`fcn_jax.data.folder`) and inference share it."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps

_WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _gray_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float grayscale array -> uint8, by the range its values use."""
    values = np.nan_to_num(values.astype(np.float64))
    peak = float(values.max(initial=0))
    if mode.startswith("I;16"):
        top = 65535.0
    elif mode == "F" and peak <= 1.0:
        top = 1.0
    else:  # 32-bit 'I' or float: 8-bit values as they are, 16-bit ones scaled, wider ones normalised
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image -> (H, W, 3) uint8 RGB, upright (EXIF orientation applied); grayscale, palette,
    CMYK, 16-bit and float images become RGB, transparent pixels are composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_GRAY_MODES:
        return np.repeat(_gray_to_uint8(np.asarray(image), image.mode)[..., None], 3, axis=2)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as (H, W, 3) uint8 RGB; raises ValueError with a one-line reason."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"cannot read image ({reason})") from e
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise ValueError(f"empty image ({rgb.shape[1]}x{rgb.shape[0]})")
    return rgb
