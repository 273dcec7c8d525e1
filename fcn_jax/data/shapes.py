"""tfds builder ``shapes``: procedurally generated segmentation scenes, built offline in seconds.

Each scene has a textured background (colour gradient, low-frequency blotches, optional faint
stripes) with clutter that is *not* an object (thin squiggly lines and speckles), and 1..N
objects of six classes painted in random order, so later ones occlude earlier ones:

====  ========  ==========================================================================
id    class     what tells it apart
====  ========  ==========================================================================
0     background
1     circle    filled disc
2     square    filled square, any rotation
3     triangle  filled equilateral triangle, any rotation
4     star      five-pointed star (needs the outline, not just the colour blob)
5     bar       long, 3-4.5 px thin bar (a fine structure: coarse outputs lose it)
6     ring      annulus with the background showing through (needs context: a disc's inside)
====  ========  ==========================================================================

Objects get random colours and textures (solid, stripes, checker, noise), sizes from small
(radius 3.5-7 px, lost at stride 32) to large, and per-pixel Gaussian noise is added. Shapes are
rasterised from signed distance functions: image pixels are anti-aliased, and every pixel the
boundary may cross (centre within half a pixel diagonal of it), or that touches a pixel of
another class, is labelled 255 (void): a thin void band along object boundaries as VOC has.
Class is never given away by colour, so a model must use shape and context; thin bars and small
objects reward the finer FCN heads.

Scenes are deterministic: example ``i`` of a split depends only on (``seed``, split, ``i``).
Configs: ``default`` (1,000 train / 200 validation, sides 64..128 px, ``clutter=False``: grey
gradient backgrounds and solid saturated objects, so a width-1/8 network learns it on 2 CPU cores in minutes;
builds in seconds), ``tiny`` (48 / 16, 40..72 px, no clutter) and ``large`` (8,000 / 800,
192..384 px, with clutter: for accelerators); any other size through
``ShapesConfig(name=..., num_train=..., num_validation=..., min_size=..., max_size=..., clutter=...)``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fcn_jax.data.common import EVAL_SPLIT, TRAIN_SPLIT, SegmentationBuilder
from fcn_jax.preprocess import VOID

SHAPES_CLASSES: tuple[str, ...] = ("background", "circle", "square", "triangle", "star", "bar", "ring")
CIRCLE, SQUARE, TRIANGLE, STAR, BAR, RING = range(1, 7)
_SPLIT_CODES = {TRAIN_SPLIT: 0, EVAL_SPLIT: 1}
_HALF_DIAGONAL = float(np.sqrt(0.5))  # a pixel centre this close to an edge may be mixed


@dataclasses.dataclass(eq=False, kw_only=True)
class ShapesConfig(tfds.core.BuilderConfig):
    """Size of the generated dataset. Image sides are drawn uniformly from [min_size, max_size]."""

    num_train: int = 1000
    num_validation: int = 200
    min_size: int = 64
    max_size: int = 128
    max_objects: int = 6
    clutter: bool = True  # textured backgrounds, clutter lines, speckles, textured objects, more noise
    seed: int = 0

    def __post_init__(self) -> None:
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError(f"shapes config {self.name!r}: need 16 <= min_size <= max_size, "
                             f"got {self.min_size}, {self.max_size}")
        if self.num_train < 1 or self.num_validation < 1 or self.max_objects < 1:
            raise ValueError(f"shapes config {self.name!r}: num_train, num_validation and max_objects must be >= 1")


CONFIGS = (
    ShapesConfig(name="default", clutter=False,
                 description="1,000 train / 200 validation clean scenes, sides 64..128 px: the CPU demo."),
    ShapesConfig(name="tiny", num_train=48, num_validation=16, min_size=40, max_size=72, clutter=False,
                 description="48 / 16 scenes, sides 40..72 px: smoke tests."),
    ShapesConfig(name="large", num_train=8000, num_validation=800, min_size=192, max_size=384, max_objects=10,
                 description="8,000 / 800 scenes, sides 192..384 px: accelerator runs."),
)


# ------------------------------------------------------------------------------------------------
# Geometry: signed distance (px, negative inside) in an object's own rotated frame (u, v).

def _polygon_sdf(u: np.ndarray, v: np.ndarray, radius: float, sides: int) -> np.ndarray:
    """Regular polygon of circumradius ``radius`` (exact inside, a lower bound outside corners)."""
    apothem = radius * np.cos(np.pi / sides)
    angles = 2 * np.pi * np.arange(sides) / sides + np.pi / sides
    return np.max([u * np.cos(a) + v * np.sin(a) for a in angles], axis=0) - apothem


def _star_sdf(u: np.ndarray, v: np.ndarray, outer: float, inner: float) -> np.ndarray:
    """Five-pointed star with tips at radius ``outer`` and notches at ``inner``."""
    rho = np.hypot(u, v)
    sector = np.pi / 5
    phi = np.mod(np.arctan2(v, u), 2 * sector)
    phi = np.minimum(phi, 2 * sector - phi)  # fold into [0, 36 deg]: one edge, tip (outer, 0) to notch
    px, py = rho * np.cos(phi), rho * np.sin(phi)
    ex, ey = inner * np.cos(sector) - outer, inner * np.sin(sector)
    return (ey * (px - outer) - ex * py) / np.hypot(ex, ey)


def _box_sdf(u: np.ndarray, v: np.ndarray, half_u: float, half_v: float) -> np.ndarray:
    qu, qv = np.abs(u) - half_u, np.abs(v) - half_v
    return np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)


def _shape_sdf(kind: int, p: Mapping[str, float], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r = p["r"]
    if kind == CIRCLE:
        return np.hypot(u, v) - r
    if kind == SQUARE:
        return _polygon_sdf(u, v, r, 4)
    if kind == TRIANGLE:
        return _polygon_sdf(u, v, r, 3)
    if kind == STAR:
        return _star_sdf(u, v, r, r * p["inner"])
    if kind == BAR:
        return _box_sdf(u, v, r, p["width"] / 2)
    if kind == RING:
        return np.abs(np.hypot(u, v) - (r - p["width"] / 2)) - p["width"] / 2
    if kind == 0:  # clutter: a thin wavy line, not an object
        wave = np.abs(v - p["amp"] * np.sin(p["freq"] * u + p["phase"])) - p["width"] / 2
        return np.maximum(wave, np.abs(u) - r)
    raise ValueError(f"unknown shape kind {kind}")


def _sdf(kind: int, p: Mapping[str, float], box: tuple[int, int, int, int]) -> np.ndarray:
    """(bh, bw) float32 signed distance of the shape at the pixel centres inside ``box``."""
    y0, y1, x0, x1 = box
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - p["cy"])[:, None]
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - p["cx"])[None, :]
    c, s = np.float32(np.cos(p["angle"])), np.float32(np.sin(p["angle"]))
    return _shape_sdf(kind, p, xs * c + ys * s, ys * c - xs * s).astype(np.float32)


def _coverage(sdf: np.ndarray) -> np.ndarray:
    """Approximate area of each pixel inside the shape (anti-aliasing weight), (bh, bw, 1)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)[..., None]


def _box(p: Mapping[str, float], extent: float, height: int, width: int) -> tuple[int, int, int, int] | None:
    y0, y1 = max(int(np.floor(p["cy"] - extent)) - 1, 0), min(int(np.ceil(p["cy"] + extent)) + 1, height)
    x0, x1 = max(int(np.floor(p["cx"] - extent)) - 1, 0), min(int(np.ceil(p["cx"] + extent)) + 1, width)
    return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None


# ------------------------------------------------------------------------------------------------
# Appearance.

def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """(H, W) float32 low-frequency noise in [-1, 1]: a random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1)).astype(np.float32)

    def weights(n: int) -> np.ndarray:  # (n, cells + 1) linear interpolation matrix
        pos = np.linspace(0, cells, n, dtype=np.float32)
        return np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(cells + 1, dtype=np.float32)[None, :]))

    return weights(height) @ grid @ weights(width).T


def _pattern(rng: np.random.Generator, kind: str, shape: tuple[int, int], offset: tuple[int, int]) -> np.ndarray:
    """(h, w) pattern in [0, 1] in image coordinates: 'stripes' or 'checker'."""
    ys = np.arange(offset[0], offset[0] + shape[0], dtype=np.float32)[:, None]
    xs = np.arange(offset[1], offset[1] + shape[1], dtype=np.float32)[None, :]
    period = rng.uniform(3.0, 8.0)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        return (np.sin(2 * np.pi * (xs * np.cos(angle) + ys * np.sin(angle)) / period) > 0).astype(np.float32)
    return ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(np.float32)


def _random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 60.0) -> np.ndarray:
    """An RGB colour (float32, 0..255), at least ``min_dist`` away from ``avoid`` if possible."""
    colour = rng.uniform(0, 255, 3).astype(np.float32)
    for _ in range(8):
        if avoid is None or np.linalg.norm(colour - avoid) >= min_dist:
            break
        colour = rng.uniform(0, 255, 3).astype(np.float32)
    return colour


def _saturated_colour(rng: np.random.Generator) -> np.ndarray:
    """A vivid RGB colour (float32, 0..255): random hue, saturation 0.6..1, value 0.55..1."""
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0)
    rgb = np.clip(np.abs((hue * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)  # hue -> RGB ramp
    return ((1 - sat + sat * rgb) * val * 255).astype(np.float32)


def _texture(rng: np.random.Generator, colour: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """(bh, bw, 3) float32 fill for an object: solid, stripes, checker or noise around ``colour``."""
    y0, y1, x0, x1 = box
    shape = (y1 - y0, x1 - x0)
    kind = rng.choice(["solid", "solid", "stripes", "checker", "noise"])
    fill = np.broadcast_to(colour, shape + (3,)).astype(np.float32)
    if kind in ("stripes", "checker"):
        second = np.clip(colour + rng.uniform(-90, 90, 3), 0, 255).astype(np.float32)
        t = _pattern(rng, kind, shape, (y0, x0))[..., None]
        fill = fill * (1 - t) + second * t
    elif kind == "noise":
        fill = fill + rng.standard_normal(shape + (3,), dtype=np.float32) * 25
    return fill


def _background(rng: np.random.Generator, height: int, width: int,
                clutter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) float32 background and its base colour (a plain gradient when not ``clutter``)."""
    ys = np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
    xs = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
    if not clutter:  # a grey gradient: background is told apart locally (objects are saturated)
        base = np.full(3, rng.uniform(40, 215), np.float32)
        return base + ys * rng.uniform(-30, 30) + xs * rng.uniform(-30, 30), base
    base = rng.uniform(20, 235, 3).astype(np.float32)
    gy, gx, gb = (rng.uniform(-r, r, 3).astype(np.float32) for r in (40, 40, 35))
    image = base + ys * gy + xs * gx + _smooth_noise(rng, height, width, int(rng.integers(2, 6)))[..., None] * gb
    if rng.random() < 0.3:
        image += (_pattern(rng, "stripes", (height, width), (0, 0))[..., None] - 0.5) * rng.uniform(10, 30)
    return image, base


# ------------------------------------------------------------------------------------------------
# Scenes.

def _object_params(rng: np.random.Generator, kind: int, height: int, width: int) -> tuple[dict[str, float], float]:
    """Random placement and size of one object; returns (params, extent in px from its centre)."""
    short = min(height, width)
    p = {"cy": rng.uniform(0, height), "cx": rng.uniform(0, width), "angle": rng.uniform(0, 2 * np.pi)}
    small = rng.random() < 0.4
    r = rng.uniform(3.5, 7.0) if small else rng.uniform(8.0, max(8.5, 0.3 * short))
    if kind == BAR:
        r, p["width"] = rng.uniform(0.2, 0.45) * short, rng.uniform(3.0, 4.5)
    elif kind == RING:
        r = max(r, 6.0)
        p["width"] = rng.uniform(2.5, max(2.6, 0.45 * r))
    elif kind == STAR:
        r, p["inner"] = max(r, 5.0), rng.uniform(0.38, 0.5)
    p["r"] = r
    return p, r


def render_scene(rng: np.random.Generator, height: int, width: int, max_objects: int = 6,
                 clutter: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (H, W, 3) uint8 RGB image and (H, W) uint8 label (0..6, 255 = void).

    Without ``clutter``: a grey gradient background and solid, saturated objects of random hue, light
    noise; shapes, sizes, occlusion and void bands are the same.
    """
    image, base = _background(rng, height, width, clutter)
    for _ in range(int(rng.integers(1, 6)) if clutter else 0):  # clutter: wavy 1-px lines, never labelled
        p = {"cy": rng.uniform(0, height), "cx": rng.uniform(0, width), "angle": rng.uniform(0, np.pi),
             "r": rng.uniform(0.15, 0.5) * min(height, width), "width": rng.uniform(0.7, 1.3),
             "amp": rng.uniform(0, 4), "phase": rng.uniform(0, 2 * np.pi)}
        p["freq"] = rng.uniform(0.1, 0.5) / max(p["amp"], 1.0)  # slope <= 0.5: the distance stays honest
        box = _box(p, p["r"] + p["amp"], height, width)
        if box is not None:
            y0, y1, x0, x1 = box
            image[y0:y1, x0:x1] += (_random_colour(rng) - image[y0:y1, x0:x1]) * _coverage(_sdf(0, p, box))
    speckles = rng.random((height, width)) < (rng.uniform(0, 0.01) if clutter else 0.0)
    image[speckles] = rng.uniform(0, 255, (int(speckles.sum()), 3))

    label = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = int(rng.integers(1, len(SHAPES_CLASSES)))
        p, extent = _object_params(rng, kind, height, width)
        box = _box(p, extent, height, width)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        sdf = _sdf(kind, p, box)
        region = label[y0:y1, x0:x1]
        region[np.abs(sdf) <= _HALF_DIAGONAL] = VOID  # the boundary may cross the pixel: mixed
        region[sdf < -_HALF_DIAGONAL] = kind  # the whole pixel lies inside
        if clutter:
            fill = _texture(rng, _random_colour(rng, avoid=base), box)
        else:
            fill = np.broadcast_to(_saturated_colour(rng), (y1 - y0, x1 - x0, 3))
        image[y0:y1, x0:x1] += (fill - image[y0:y1, x0:x1]) * _coverage(sdf)

    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(2, 10) if clutter else 2.0)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), _separate_classes(label)


def _separate_classes(label: np.ndarray) -> np.ndarray:
    """Voids both pixels of every 4-neighbour pair of two different classes (in place; returned)."""
    touching = np.zeros(label.shape, bool)
    down = (label[1:] != label[:-1]) & (label[1:] != VOID) & (label[:-1] != VOID)
    right = (label[:, 1:] != label[:, :-1]) & (label[:, 1:] != VOID) & (label[:, :-1] != VOID)
    touching[1:] |= down
    touching[:-1] |= down
    touching[:, 1:] |= right
    touching[:, :-1] |= right
    label[touching] = VOID
    return label


def generate_example(config: ShapesConfig, split: str, index: int) -> dict[str, Any]:
    """Example ``index`` of ``split``: {'image': (H, W, 3) uint8, 'segmentation': (H, W) uint8, 'file_name'}."""
    rng = np.random.default_rng((config.seed, _SPLIT_CODES[split], index))
    height, width = (int(v) for v in rng.integers(config.min_size, config.max_size + 1, 2))
    image, label = render_scene(rng, height, width, config.max_objects, config.clutter)
    return {"image": image, "segmentation": label, "file_name": f"{split}_{index:06d}"}


class Shapes(SegmentationBuilder):
    """Synthetic shapes segmentation (7 classes, 255 = void); see the module docstring.

    Pick a named config ('default', 'tiny', 'large') or pass ``config=ShapesConfig(name=..., ...)``
    for another size (a distinct name per distinct size: the name selects the directory on disk).
    """

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "default and tiny configs without clutter, so the CPU demo learns in minutes."}
    BUILDER_CONFIGS = list(CONFIGS)
    DEFAULT_CONFIG_NAME = "default"
    CLASS_NAMES = SHAPES_CLASSES
    DESCRIPTION = "Procedural scenes of circles, squares, triangles, stars, thin bars and rings (255 = void)."

    def expected_split_sizes(self) -> Mapping[str, int]:
        return {TRAIN_SPLIT: self.builder_config.num_train, EVAL_SPLIT: self.builder_config.num_validation}

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        return {split: self._generate_examples(split, n) for split, n in self.expected_split_sizes().items()}

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for index in range(count):
            example = generate_example(self.builder_config, split, index)
            yield example["file_name"], example
