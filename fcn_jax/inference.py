"""Running a trained FCN on images: reading them, the forward pass with test-time augmentation, label maps.

::

    segment = fcn_jax.Inference.load("runs/fcn16s")     # or any path fcn_jax.load_model takes
    label = segment(image)                               # (H, W) int32 class indices, full resolution
    label, probs = segment.predict(image, probabilities=True)

Images are uint8 RGB (H, W, 3) arrays, or files of any format PIL reads (:func:`load_image`). Every
image runs alone at its own size, so nothing is padded or resized and the result is what the network
computes for that image; one program is compiled per distinct size (and cached on disk across runs
when :func:`fcn_jax.platform.setup` enabled the compilation cache).

Test-time augmentation (optional): every scale ``s`` resizes the input by ``s`` (bilinear), runs the
network and resizes the logits back (bilinear); with ``flip`` each pass also runs on the mirrored image;
the prediction is the argmax of the softmax probabilities averaged over all passes. A single pass
takes the argmax of the logits, as the reference does.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fcn_jax.images import load_image
from fcn_jax.loading import as_variables, load
from fcn_jax.preprocess import check_convention, preprocess


# ---------------------------------------------------------------------------------- the forward pass

def mirror(x: jax.Array, widths: jax.Array | None = None) -> jax.Array:
    """Mirrors each row's first ``widths[b]`` columns of (B, H, W, C) ``x`` (all of them if None).

    Columns at and beyond a row's width (bucket padding) stay where they are; the map is an involution.
    """
    if widths is None:
        return x[:, :, ::-1]
    cols = jnp.arange(x.shape[2])[None, :]
    w = widths.astype(jnp.int32)[:, None]
    source = jnp.where(cols < w, w - 1 - cols, cols)  # (B, W)
    return jnp.take_along_axis(x, source[:, None, :, None], axis=2)


def is_single_pass(flip: bool, scales: Sequence[float]) -> bool:
    """Whether the settings mean one plain forward pass (no test-time augmentation)."""
    return not flip and tuple(scales) == (1.0,)


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """``scales`` as a tuple if all are positive and finite, else ValueError."""
    scales = tuple(float(s) for s in scales)
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    return scales


def class_scores(model: Any, params: Any, x: jax.Array, *, flip: bool = False,
                 scales: Sequence[float] = (1.0,), widths: jax.Array | None = None) -> jax.Array:
    """Per-class scores (B, H, W, C) float32 of preprocessed images ``x`` (B, H, W, 3); argmax = prediction.

    ``params``: a parameter tree or ``{'params': ...}``. One pass: the logits. Test-time augmentation:
    the softmax probabilities averaged over every scale (and its mirror image with ``flip``).
    ``widths`` (B,): each image's true width inside a padded batch (only used to mirror; None mirrors
    the whole width).
    """
    variables = as_variables(params)
    if is_single_pass(flip, scales):
        return model.apply(variables, x)
    scales = check_scales(scales)
    batch, height, width, _ = x.shape
    total = jnp.zeros((), jnp.float32)
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = x if size == (height, width) else jax.image.resize(x, (batch, *size, x.shape[3]), "bilinear")
        ws = None if widths is None else jnp.round(widths * (size[1] / width))
        for mirrored in (False, True) if flip else (False,):
            logits = model.apply(variables, mirror(xs, ws) if mirrored else xs)
            if mirrored:
                logits = mirror(logits, ws)
            if size != (height, width):
                logits = jax.image.resize(logits, (batch, height, width, logits.shape[3]), "bilinear")
            total = total + jax.nn.softmax(logits, axis=-1)
    return total / (len(scales) * (2 if flip else 1))


# ------------------------------------------------------------------------------ images in, labels out

class Inference:
    """Segments uint8 RGB images one at a time at full resolution, on the default device.

    ``model``: the linen module (e.g. from :func:`fcn_jax.load_model`); ``variables``: its variables
    (or bare params); ``preprocessing``: the convention the weights expect; ``class_names``: optional,
    for the caller's use; ``flip`` / ``scales``: test-time augmentation. One program is compiled per
    image size.
    """

    def __init__(self, model: Any, variables: Mapping[str, Any], preprocessing: str, *,
                 class_names: Sequence[str] | None = None, flip: bool = False, scales: Sequence[float] = (1.0,),
                 colours: Sequence[Sequence[int]] | None = None):
        self.model, self.preprocessing = model, check_convention(preprocessing)
        self.class_names = None if class_names is None else tuple(class_names)
        self.colours = None if colours is None else tuple(tuple(int(v) for v in c) for c in colours)
        self.flip, self.scales = bool(flip), check_scales(scales)
        self.variables = jax.device_put(as_variables(variables))
        single = is_single_pass(self.flip, self.scales)

        def run(variables: Any, image: jax.Array, probabilities: bool) -> tuple[jax.Array, jax.Array | None]:
            out = class_scores(model, variables, preprocess(image[None], self.preprocessing), flip=self.flip,
                               scales=self.scales)[0]
            label = jnp.argmax(out, axis=-1).astype(jnp.int32)
            if not probabilities:
                return label, None
            return label, (jax.nn.softmax(out, axis=-1) if single else out)

        self._run = jax.jit(run, static_argnums=2)

    @classmethod
    def load(cls, path: str | os.PathLike, *, step: str | int = "best", dtype: str | None = None,
             flip: bool = False, scales: Sequence[float] = (1.0,)) -> Inference:
        """An :class:`Inference` for anything :func:`fcn_jax.load_model` loads."""
        variables, info = load(path, step=step, dtype=dtype)
        return cls.from_info(variables, info, flip=flip, scales=scales)

    @classmethod
    def from_info(cls, variables: Mapping[str, Any], info: Any, *, flip: bool = False,
                  scales: Sequence[float] = (1.0,)) -> Inference:
        """An :class:`Inference` for ``variables`` and the :class:`fcn_jax.loading.ModelInfo` loaded with
        them (network, preprocessing, class names and colours)."""
        return cls(info.config.build(), variables, info.preprocessing, class_names=info.class_names, flip=flip,
                   scales=scales, colours=info.colours)

    def predict(self, image: np.ndarray | str | os.PathLike, *,
                probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` (H, W, 3) uint8 RGB or an image file -> (label (H, W) int32, probabilities (H, W, C)
        float32 with ``probabilities``, else None). Probabilities are averaged over the augmentations."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        label, probs = self._run(self.variables, jnp.asarray(image), bool(probabilities))
        return np.asarray(label), None if probs is None else np.asarray(probs)

    def __call__(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """The label map (H, W) int32 of one image (array or file)."""
        return self.predict(image)[0]


def predict(path: str | os.PathLike, images: Any, *, step: str | int = "best", flip: bool = False,
            scales: Sequence[float] = (1.0,)) -> np.ndarray | list[np.ndarray]:
    """Label maps of ``images`` by the model at ``path`` (anything :func:`fcn_jax.load_model` takes).

    ``images``: one (H, W, 3) uint8 RGB array or image file, or a sequence of them (sizes may differ).
    Returns one (H, W) int32 label map, or a list of them.
    """
    segment = Inference.load(path, step=step, flip=flip, scales=scales)
    single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3)
    if single:
        return segment(images)
    return [segment(image) for image in images]
