"""Pictures: the VOC palette, colourised label maps, overlays with legends, panels, learning curves.

Label maps are (H, W) integer arrays of class indices (255 = void). Colourised maps are palette PNGs
whose pixel values are the class indices themselves, so they are at once readable labels (the VOC
ground-truth format) and pictures.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


_MARGIN, _SWATCH = 6, 12


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard PASCAL VOC colour map: (n, 3) uint8, colour i from the bits of i interleaved.

    0 background (0, 0, 0), 1 aeroplane (128, 0, 0), ..., 255 void (224, 224, 192).
    """
    index = np.arange(n)
    palette = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> (3 * shift + channel)) & 1
            palette[:, channel] |= bit << (7 - shift)
    return palette.astype(np.uint8)


PALETTE = voc_palette()


def class_palette(colours: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(256, 3) uint8 palette: the dataset's own class ``colours`` (C, 3) for classes 0..C-1 (a folder
    dataset's classes.txt), the VOC colours for the rest (255 = void stays VOC cream)."""
    palette = PALETTE.copy()
    if colours is not None and len(colours):
        table = np.asarray(colours, np.int64)
        if table.ndim != 2 or table.shape[1] != 3 or len(table) > 255 or table.min() < 0 or table.max() > 255:
            raise ValueError(f"expected up to 255 RGB colours in 0..255, got shape {table.shape}")
        palette[:len(table)] = table
    return palette


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"expected an (H, W) label map, got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {label.min()}..{label.max()}")
    return label.astype(np.uint8)


def colorize(label: np.ndarray, colours: Sequence[Sequence[int]] | None = None) -> Image.Image:
    """(H, W) class indices -> palette ('P') image with the class colours (:func:`class_palette`: VOC's
    unless ``colours`` are given); pixel values stay indices."""
    label = _check_label(label)
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    image.putpalette(class_palette(colours).reshape(-1).tolist())
    return image


def _present(labels: Sequence[np.ndarray], num_classes: int) -> list[int]:
    """Sorted class indices (< num_classes) occurring in any of ``labels``."""
    found = set()
    for label in labels:
        found.update(int(v) for v in np.unique(label))
    return sorted(c for c in found if 0 <= c < num_classes)


def _legend(classes: Sequence[int], class_names: Sequence[str], min_height: int,
            palette: np.ndarray = PALETTE) -> Image.Image:
    """A white column listing ``classes`` as colour swatch + name, at least ``min_height`` tall."""
    font, probe = ImageFont.load_default(), ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), class_names[c], font=font) for c in classes]
    line = max([_SWATCH] + [b[3] - b[1] for b in boxes]) + 4
    text_w = max([0] + [b[2] - b[0] for b in boxes])
    legend = Image.new("RGB", (3 * _MARGIN + _SWATCH + text_w, max(min_height, 2 * _MARGIN + line * len(classes))),
                       "white")
    draw = ImageDraw.Draw(legend)
    for row, c in enumerate(classes):
        y = _MARGIN + row * line
        draw.rectangle((_MARGIN, y, _MARGIN + _SWATCH - 1, y + _SWATCH - 1), fill=tuple(int(v) for v in palette[c]),
                       outline=(96, 96, 96))
        draw.text((2 * _MARGIN + _SWATCH, y), class_names[c], fill="black", font=font)
    return legend


def _hstack(images: Sequence[Image.Image], gap: int = _MARGIN) -> Image.Image:
    """Images side by side, top-aligned, on white, ``gap`` pixels apart."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return out


def _check_image(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if image.shape[:2] != np.shape(label):
        raise ValueError(f"image {image.shape[:2]} and label {np.shape(label)} differ in size")
    return image


def overlay(image: np.ndarray, label: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            colours: Sequence[Sequence[int]] | None = None) -> Image.Image:
    """RGB picture: ``image`` (H, W, 3) uint8 blended with the class colours of ``label`` (H, W), and a
    legend of the classes present to its right. Pixels outside ``0..len(class_names)-1`` stay unblended.
    ``colours``: the classes' own colours (:func:`class_palette`), default VOC's.
    """
    image = _check_image(image, label)
    label = _check_label(label)
    palette = class_palette(colours)
    tint = (label < len(class_names))[..., None]
    blended = (1 - alpha) * image + alpha * palette[label].astype(np.float64)
    picture = np.where(tint, np.clip(np.rint(blended), 0, 255), image).astype(np.uint8)
    legend = _legend(_present([label], len(class_names)), class_names, picture.shape[0], palette)
    return _hstack([Image.fromarray(picture), legend], gap=0)


def panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names: Sequence[str],
          colours: Sequence[Sequence[int]] | None = None) -> Image.Image:
    """RGB picture ``image | ground truth | prediction`` with titles and a legend of the classes present.

    ``image`` (H, W, 3) uint8; ``gt`` and ``pred`` (H, W) class indices (void 255 shows in VOC cream);
    ``colours``: the classes' own colours, default VOC's.
    """
    image = _check_image(image, gt)
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in size")
    font, title_h = ImageFont.load_default(), 16
    columns = []
    for title, tile in (("image", Image.fromarray(image)), ("ground truth", colorize(gt, colours)),
                        ("prediction", colorize(pred, colours))):
        title_w = int(ImageDraw.Draw(tile).textlength(title, font=font)) + 4
        column = Image.new("RGB", (max(tile.width, title_w), tile.height + title_h), "white")
        column.paste(tile.convert("RGB"), (0, title_h))
        ImageDraw.Draw(column).text((2, 2), title, fill="black", font=font)
        columns.append(column)
    legend = _legend(_present([gt, pred], len(class_names)), class_names, columns[0].height, class_palette(colours))
    return _hstack(columns + [legend])


def plot_learning_curves(metrics_jsonl_path: str, out_png: str) -> str:
    """Plots a training run's ``metrics.jsonl`` (or its workdir) to ``out_png`` and returns its path.

    Lines are ``{"step": int, "train/loss": float, ..., "val/mean_iu": float, ...}``. Left: every
    ``train/*loss*`` series against step; right: every ``val/*`` series except speeds (if any).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed

    from fcn_jax.summary import read_metrics
    records = read_metrics(metrics_jsonl_path)
    keys = sorted({k for r in records for k in r})
    groups = [("training loss", [k for k in keys if k.startswith("train/") and "loss" in k]),
              ("validation", [k for k in keys if k.startswith("val/") and "per_s" not in k])]
    groups = [g for g in groups if g[1]]
    if not groups:
        raise ValueError(f"{metrics_jsonl_path}: no train/*loss* or val/* series to plot")
    fig = Figure(figsize=(6 * len(groups), 4), layout="constrained")
    for ax, (title, series) in zip(fig.subplots(1, len(groups), squeeze=False)[0], groups):
        for key in series:
            points = [(r["step"], r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if points:
                ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=key)
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png
