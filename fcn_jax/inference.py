"""Running a trained FCN on images: reading them, the forward pass with test-time augmentation, label maps.

::

    segment = fcn_jax.Inference.load("runs/fcn16s")     # or any path fcn_jax.load_model takes
    label = segment(image)                               # (H, W) int32 class indices, full resolution
    label, probs = segment.predict(image, probabilities=True)
    tiled = fcn_jax.Inference.load("runs/fcn16s", tile=512, max_side=1024)  # huge images in 512 windows
    fast = fcn_jax.Inference.load("fcn16s.onnx")         # an exported ONNX file on onnxruntime (fixed size)

Images are uint8 RGB (H, W, 3) arrays, or files of any format PIL reads (:func:`load_image`). Every
image runs alone at its own size, so nothing is padded or resized and the result is what the network
computes for that image; one program is compiled per distinct size (and cached on disk across runs
when :func:`fcn_jax.platform.setup` enabled the compilation cache).

Sliding-window tiling (``tile=T``, MMSegmentation's ``slide`` mode) bounds the memory of huge images:
an image whose long side exceeds ``max_side`` (default ``T``) runs as overlapping windows of
``min(T, H)`` x ``min(T, W)`` pixels (:func:`tile_windows`). Along each axis they start at 0, S, 2S, ...,
as many as needed to cover it, the last one moved back to end at the image's edge. The stride S is
``T - round(overlap * T)``, rounded down to a multiple of 32 (the networks' output stride) when at
least 32, so that all windows but the edge ones see the pooling grid the whole image does (with random
weights in tests/test_tiling.py, 96-pixel windows at stride 64 agree with whole-image labels at 88% of
the pixels, at stride 67 at 57%). Each window goes through the same forward pass (with the same
test-time augmentation) as a whole image; the class scores (logits for a single pass, averaged
probabilities with augmentation) are averaged where windows overlap, then the argmax is taken. All
windows of an image have one shape, so one program serves every window of every image of at least
``T`` x ``T``. Sums are kept in float32 on the host for one band of windows at a time (``min(T, H)`` x
W x C), so memory does not grow with the image's height. Unlike whole-image inference, a window sees
only its own ``T`` x ``T`` context.

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

from fcn_jax import onnx_model
from fcn_jax.images import load_image
from fcn_jax.loading import load
from fcn_jax.models.registry import main_output, require
from fcn_jax.preprocess import check_convention, preprocess
from fcn_jax.programs import bounded_jit
from fcn_jax.variables import as_variables


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


def forward(model: Any, variables: Any, x: jax.Array, sizes: jax.Array | None = None) -> dict[str, jax.Array]:
    """``model.apply`` in inference mode as ``{output name: logits (B, H, W, C)}`` (the evaluated outputs),
    whatever the model returns for a single output. ``variables``: every collection (a bare parameter tree
    is taken as ``{'params': tree}``). ``sizes`` (B, 2) int32: each image's (h, w) top-left in the padded
    batch ``x``, for an exact own-size forward pass of each (an FCN whose ``registry.maskable``; see
    :class:`fcn_jax.models.FCN`)."""
    variables = as_variables(variables)
    if getattr(model, "outputs", None) is not None:  # an FCN: its outputs by name
        given = {} if sizes is None else {"sizes": sizes}
        return dict(model.apply(variables, x, return_dict=True, **given))
    if sizes is not None:
        raise ValueError(f"{type(model).__name__} takes no per-image sizes (only an FCN of a maskable variant)")
    out = model.apply(variables, x)
    return dict(out) if isinstance(out, Mapping) else {"out": out}


def class_scores(model: Any, variables: Any, x: jax.Array, *, flip: bool = False,
                 scales: Sequence[float] = (1.0,), widths: jax.Array | None = None,
                 sizes: jax.Array | None = None) -> dict[str, jax.Array]:
    """Per-class scores ``{output: (B, H, W, C) float32}`` of preprocessed inputs ``x`` (B, H, W, C_in), for
    every evaluated output (:func:`forward`); argmax = prediction.

    One pass: the logits. Test-time augmentation: the softmax probabilities averaged over every scale
    (and its mirror image with ``flip``). ``widths`` (B,): each image's true width inside a padded batch
    (only used to mirror; None mirrors the whole width). ``sizes`` (B, 2): each image's (h, w) inside a
    padded batch, for masked forward passes (:func:`forward`; ``widths`` default to its widths). At scale 1,
    mirrored or not, each image's scores are its own-size ones; a scaled pass resizes the whole canvas and
    masks each image to its rounded scaled size, so there an image's border blends with the canvas filler
    (the own-size pass resizes the image alone).
    """
    if sizes is not None and widths is None:
        widths = sizes[:, 1]
    if is_single_pass(flip, scales):
        return forward(model, variables, x, sizes)
    scales = check_scales(scales)
    batch, height, width, _ = x.shape
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        xs = x if size == (height, width) else jax.image.resize(x, (batch, *size, x.shape[3]), "bilinear")
        ws = None if widths is None else jnp.round(widths * (size[1] / width))
        ss = None if sizes is None else jnp.maximum(jnp.round(sizes * jnp.asarray(
            [size[0] / height, size[1] / width])), 1).astype(jnp.int32) * (sizes > 0)
        ws = ws if ss is None else ss[:, 1]
        for mirrored in (False, True) if flip else (False,):
            def probabilities(logits: jax.Array) -> jax.Array:
                if mirrored:
                    logits = mirror(logits, ws)
                if size != (height, width):
                    logits = jax.image.resize(logits, (batch, height, width, logits.shape[3]), "bilinear")
                return jax.nn.softmax(logits, axis=-1)

            probs = jax.tree.map(probabilities, forward(model, variables, mirror(xs, ws) if mirrored else xs, ss))
            total = probs if total is None else jax.tree.map(jnp.add, total, probs)
    return jax.tree.map(lambda t: t / (len(scales) * (2 if flip else 1)), total)


# ------------------------------------------------------------------------------ sliding windows

MIN_TILE = 32
ALIGN = 32  # the networks' output stride: windows at multiples of it see the whole image's pooling grid


def label_map(scores: jax.Array) -> jax.Array:
    """The per-pixel argmax of ``scores`` (..., C) as int32 (...): the first class of the largest score, a
    NaN counting as largest, exactly ``jnp.argmax``. Written as a max and a min over a class index
    because XLA's TPU compiler spends minutes on the variadic reduce ``jnp.argmax`` lowers to when the
    class axis is short and minor (fcn8s forward + argmax for v5e: 185 s; this form: 31 s, see README
    Performance)."""
    best = jnp.max(scores, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, scores.shape, scores.ndim - 1)
    first = (scores == best) | jnp.isnan(scores)
    return jnp.min(jnp.where(first, index, scores.shape[-1]), axis=-1)


def check_tiling(tile: int | None, overlap: float, max_side: int | None) -> tuple[int | None, float, int | None]:
    """``(tile, overlap, max_side)`` if valid (tile None or an integer >= 32, overlap in [0, 1), max_side
    None or an integer >= 0), else a one-line ValueError."""
    def integer(value: Any) -> bool:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

    if tile is not None and not (integer(tile) and tile >= MIN_TILE):
        raise ValueError(f"tile must be None or an integer >= {MIN_TILE}, got {tile!r}")
    if isinstance(overlap, (bool, np.bool_)) or not isinstance(overlap, (int, float, np.integer, np.floating)) \
            or not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}")
    if max_side is not None and not (integer(max_side) and max_side >= 0):
        raise ValueError(f"max_side must be None or an integer >= 0, got {max_side!r}")
    return (None if tile is None else int(tile)), float(overlap), (None if max_side is None else int(max_side))


def tile_stride(tile: int, overlap: float) -> int:
    """The step between neighbouring windows: ``tile - round(overlap * tile)``, rounded down to a multiple
    of :data:`ALIGN` when that is at least ``ALIGN`` (else at least 1)."""
    stride = max(1, tile - int(round(overlap * tile)))
    return stride - stride % ALIGN if stride >= ALIGN else stride


def tile_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis of length ``size`` (windows of ``crop <= size``): ``0, stride,
    2 stride, ...`` as many as needed to reach the end, the last one moved back to end at ``size``."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(count)]


def tile_windows(height: int, width: int, tile: int | tuple[int, int],
                 overlap: float) -> list[tuple[int, int, int, int]]:
    """The windows ``(top, left, h, w)`` covering a ``height`` x ``width`` image, row by row: all of size
    ``min(tile, height)`` x ``min(tile, width)``, stride :func:`tile_stride` along each axis (MMSegmentation's
    slide). ``tile``: T (square windows) or (T_h, T_w)."""
    tile_h, tile_w = (tile, tile) if isinstance(tile, (int, np.integer)) else tile
    h, w = min(tile_h, height), min(tile_w, width)
    return [(y, x, h, w) for y in tile_starts(height, h, tile_stride(tile_h, overlap))
            for x in tile_starts(width, w, tile_stride(tile_w, overlap))]


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------------ images in, labels out

class Inference:
    """Segments uint8 RGB images one at a time at full resolution, on the default device.

    Single-head models on RGB input only (ValueError naming the variant otherwise: SIFT Flow's two heads
    and NYUD's depth / HHA inputs are for ``eval.py``).

    ``model``: the linen module (e.g. from :func:`fcn_jax.load_model`); ``variables``: its variables,
    every collection (or bare params); ``preprocessing``: the convention the weights expect; ``class_names``: optional,
    for the caller's use; ``flip`` / ``scales``: test-time augmentation. One program is compiled per
    image size (per window size for tiled images).

    ``tile``: None (default) runs every image whole; an integer ``T >= 32`` runs images whose long side
    exceeds ``max_side`` (default ``T``; 0 tiles every image) as overlapping ``T`` x ``T`` windows whose
    class scores are averaged (see the module docstring), neighbours sharing at least ``overlap`` (in
    [0, 1), default 1/3) of ``T``.

    A model with a fixed ``input_size`` (H, W) (an ONNX graph, :class:`fcn_jax.onnx_model.OnnxModel`) runs an
    image of that size whole and a larger one as overlapping windows of that size (``tile`` and ``max_side``
    must be None); a smaller image is a ValueError naming both sizes, and ``scales`` must be (1,).
    """

    def __init__(self, model: Any, variables: Mapping[str, Any], preprocessing: str, *,
                 class_names: Sequence[str] | None = None, flip: bool = False, scales: Sequence[float] = (1.0,),
                 colours: Sequence[Sequence[int]] | None = None, tile: int | None = None,
                 overlap: float = 1 / 3, max_side: int | None = None):
        self.tile, self.overlap, self.max_side = check_tiling(tile, overlap, max_side)
        if getattr(model, "variant", None) is not None:  # what this class runs: one output, an RGB image
            require(model.variant, rgb=True, single_output=True, tool="Inference / predict.py")
            self.output = main_output(model.variant, model.num_classes).name
        else:
            self.output = "out"
        self.model, self.preprocessing = model, check_convention(preprocessing)
        self.class_names = None if class_names is None else tuple(class_names)
        self.colours = None if colours is None else tuple(tuple(int(v) for v in c) for c in colours)
        self.flip, self.scales = bool(flip), check_scales(scales)
        self.input_size = getattr(model, "input_size", None)  # a fixed-size graph's (H, W)
        if self.input_size is not None and (self.tile is not None or self.max_side is not None):
            raise ValueError("tile / max_side: a fixed-size model runs larger images as windows of its own size")
        if self.input_size is not None and self.scales != (1.0,):
            raise ValueError(f"scales {self.scales}: a fixed-size model runs at its own size only (scale 1)")
        self.variables = jax.device_put(as_variables(variables))
        single = self.single_pass = is_single_pass(self.flip, self.scales)

        def scores(variables: Any, image: jax.Array) -> jax.Array:
            return class_scores(model, variables, preprocess(image[None], self.preprocessing), flip=self.flip,
                                scales=self.scales)[self.output][0]

        def run(variables: Any, image: jax.Array, probabilities: bool) -> tuple[jax.Array, jax.Array | None]:
            out = scores(variables, image)
            label = label_map(out)
            if not probabilities:
                return label, None
            return label, (jax.nn.softmax(out, axis=-1) if single else out)

        self._run = bounded_jit(run, static_argnums=2)
        self._scores = bounded_jit(scores)  # (H, W, C) class scores of one image or window

    @classmethod
    def load(cls, path: str | os.PathLike, *, step: str | int = "best", dtype: str | None = None,
             flip: bool = False, scales: Sequence[float] = (1.0,), tile: int | None = None,
             overlap: float = 1 / 3, max_side: int | None = None) -> Inference:
        """An :class:`Inference` for anything :func:`fcn_jax.load_model` loads."""
        check_tiling(tile, overlap, max_side)  # before the (slow) loading
        if onnx_model.is_onnx(path):
            if dtype is not None:
                raise ValueError(f"dtype {dtype!r}: an ONNX model computes in the dtype it was exported with")
            return cls.from_onnx(path, flip=flip, scales=scales, tile=tile, overlap=overlap, max_side=max_side)
        variables, info = load(path, step=step, dtype=dtype)
        return cls.from_info(variables, info, flip=flip, scales=scales, tile=tile, overlap=overlap,
                             max_side=max_side)

    @classmethod
    def from_info(cls, variables: Mapping[str, Any], info: Any, *, flip: bool = False,
                  scales: Sequence[float] = (1.0,), tile: int | None = None, overlap: float = 1 / 3,
                  max_side: int | None = None, model: Any = None) -> Inference:
        """An :class:`Inference` for ``variables`` and the :class:`fcn_jax.loading.ModelInfo` loaded with
        them (network, preprocessing, class names and colours). ``model``: what runs, if not the network
        ``info`` describes (an :class:`fcn_jax.onnx_model.OnnxModel`)."""
        return cls(info.config.build() if model is None else model, variables, info.preprocessing,
                   class_names=info.class_names, flip=flip, scales=scales, colours=info.colours, tile=tile,
                   overlap=overlap, max_side=max_side)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, *, flip: bool = False, scales: Sequence[float] = (1.0,),
                  tile: int | None = None, overlap: float = 1 / 3, max_side: int | None = None) -> Inference:
        """An :class:`Inference` running the ONNX file at ``path`` on onnxruntime (:mod:`fcn_jax.onnx_model`:
        its fixed size, windows of that size for larger images; the extra ``fcn-jax[onnx]``)."""
        model, info = onnx_model.load(path)
        return cls.from_info({}, info, model=model, flip=flip, scales=scales, tile=tile, overlap=overlap,
                             max_side=max_side)

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]] | None:
        """The windows ``(top, left, h, w)`` an image of this size runs as, or None if it runs whole.
        ValueError for an image smaller than a fixed-size model's input."""
        if self.input_size is not None:
            fixed_h, fixed_w = self.input_size
            if (height, width) == self.input_size:
                return None
            if height < fixed_h or width < fixed_w:
                raise ValueError(f"{width}x{height} (WxH) is smaller than the model's fixed {fixed_w}x{fixed_h} "
                                 f"input; export it at a smaller --image-size")
            return tile_windows(height, width, self.input_size, self.overlap)
        if self.tile is None or max(height, width) <= (self.tile if self.max_side is None else self.max_side):
            return None
        return tile_windows(height, width, self.tile, self.overlap)

    def _slide(self, image: np.ndarray, windows: list[tuple[int, int, int, int]],
               keep: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(label (H, W) int32, None or (H, W, C) float32) of ``image`` run as ``windows`` (row by row, all one
        size). ``keep``: None, 'scores' (the averaged class scores) or 'probabilities' (their softmax for a
        single pass, the scores themselves with augmentation). Sums live in a band of one window row's
        height: rows above the next window row are final, so they are divided by their window count and
        written out before the band moves down."""
        height, width = image.shape[:2]
        size_h, size_w = windows[0][2:]
        rows, cols = np.zeros(height, np.float32), np.zeros(width, np.float32)  # windows covering each
        for top in sorted({t for t, _, _, _ in windows}):
            rows[top:top + size_h] += 1
        for left in sorted({lft for _, lft, _, _ in windows}):
            cols[left:left + size_w] += 1
        label = np.empty((height, width), np.int32)
        kept = band = None
        band_top = 0

        def finish(count: int) -> None:  # rows band_top .. band_top + count - 1 are complete
            part = band[:count] / (rows[band_top:band_top + count, None, None] * cols[None, :, None])
            label[band_top:band_top + count] = np.argmax(part, axis=-1)
            if kept is not None:
                kept[band_top:band_top + count] = _softmax(part) if keep == "probabilities" and self.single_pass \
                    else part

        for top, left, h, w in windows:
            out = self._forward(image[top:top + h, left:left + w])
            if band is None:
                band = np.zeros((size_h, width, out.shape[-1]), np.float32)
                kept = None if keep is None else np.empty((height, width, out.shape[-1]), np.float32)
                band_top = top
            elif top != band_top:  # a new row of windows: the rows above it are complete
                shift = top - band_top
                finish(shift)
                band[:size_h - shift] = band[shift:].copy()
                band[size_h - shift:] = 0
                band_top = top
            band[:, left:left + w] += out
        finish(height - band_top)
        return label, kept

    def scores(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """The class scores (H, W, C) float32 whose argmax is the label map: the logits for a single pass,
        the averaged probabilities with test-time augmentation; averaged over the windows if tiled."""
        image = self._image(image)
        windows = self.windows(*image.shape[:2])
        if windows is None:
            return self._forward(image)
        return self._slide(image, windows, "scores")[1]

    def _forward(self, image: np.ndarray) -> np.ndarray:
        """The class scores (h, w, C) of one image or window, on the host."""
        return np.asarray(self._scores(self.variables, jnp.asarray(image)))

    def _whole(self, image: np.ndarray, probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Label and (with ``probabilities``) probabilities of a whole image, on the host."""
        label, probs = self._run(self.variables, jnp.asarray(image), probabilities)
        return np.asarray(label), None if probs is None else np.asarray(probs)

    @staticmethod
    def _image(image: np.ndarray | str | os.PathLike) -> np.ndarray:
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
        return image

    def predict(self, image: np.ndarray | str | os.PathLike, *,
                probabilities: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``image`` (H, W, 3) uint8 RGB or an image file -> (label (H, W) int32, probabilities (H, W, C)
        float32 with ``probabilities``, else None). Probabilities are averaged over the augmentations (and
        for a tiled image, over the windows; a single pass takes the softmax of the averaged logits)."""
        image = self._image(image)
        windows = self.windows(*image.shape[:2])
        if windows is not None:
            return self._slide(image, windows, "probabilities" if probabilities else None)
        return self._whole(image, bool(probabilities))

    def __call__(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """The label map (H, W) int32 of one image (array or file)."""
        return self.predict(image)[0]


def predict(path: str | os.PathLike, images: Any, *, step: str | int = "best", flip: bool = False,
            scales: Sequence[float] = (1.0,), tile: int | None = None, overlap: float = 1 / 3,
            max_side: int | None = None) -> np.ndarray | list[np.ndarray]:
    """Label maps of ``images`` by the model at ``path`` (anything :func:`fcn_jax.load_model` takes).

    ``images``: one (H, W, 3) uint8 RGB array or image file, or a sequence of them (sizes may differ).
    Returns one (H, W) int32 label map, or a list of them. ``tile`` / ``overlap`` / ``max_side``:
    sliding-window inference of large images (:class:`Inference`).
    """
    segment = Inference.load(path, step=step, flip=flip, scales=scales, tile=tile, overlap=overlap,
                             max_side=max_side)
    single = isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3)
    if single:
        return segment(images)
    return [segment(image) for image in images]
