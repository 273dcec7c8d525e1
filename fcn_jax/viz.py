"""Pictures: the VOC palette, colourised label maps, overlays with legends, panels, learning curves.

Label maps are (H, W) integer arrays of class indices (255 = void). Colourised maps are palette PNGs
whose pixel values are the class indices themselves, so they are at once readable labels (the VOC
ground-truth format) and pictures.

Overlays keep the photo as it is wherever nothing was found: only pixels of non-background classes are
tinted, outlined in a darker shade of their colour, and the legend beside them lists the classes that
cover at least ``min_area`` of the picture, largest first, with the share of the picture each covers.
Text (legends, titles) is sized from the picture's height, so it stays readable from thumbnails of
80 pixels to photos of 4000; small images in panels are enlarged (nearest neighbour, whole pixels).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
from io import BytesIO
from typing import Any, Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcn_jax.io import write_bytes

BACKGROUND_NAMES = ("background", "bg", "_background_")  # class 0 under one of these names is background
AUTO: Literal["auto"] = "auto"
CONTOUR_SHADE = 0.5  # contours are the class colour times this
MIN_AREA = 0.001  # legends omit classes covering less than this fraction of the pixels
MIN_TILE = 256  # panel tiles are enlarged to at least this many pixels on their short side
_TEXT = (32, 32, 32)
_MUTED = (110, 110, 110)


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


# ------------------------------------------------------------------------------------------ text

@functools.lru_cache(maxsize=None)
def _font_file() -> str | None:
    """DejaVu Sans as shipped with matplotlib (a dependency; wide character coverage), if present."""
    spec = importlib.util.find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(root, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A sans-serif font ``size`` pixels tall: DejaVu Sans (matplotlib's copy), else Pillow's own
    scalable default (Pillow >= 10.1 with FreeType), else Pillow's fixed bitmap font."""
    path = _font_file()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default()


def font_size(height: int) -> int:
    """Legend text size in pixels for a picture ``height`` pixels tall: 11 up to about 300 px, then
    3.5% of the height (35 px at 1000, 140 px at 4000)."""
    return max(11, round(0.035 * height))


def _text_size(text: str, face: Any) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=face)
    return right, bottom


def _wrap(text: str, face: Any, width: int) -> list[str]:
    """``text`` broken at spaces into lines at most ``width`` pixels wide (a single word may exceed it)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and _text_size(candidate, face)[0] > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def text_block(text: str, width: int, size: int, colour: Any = _TEXT) -> Image.Image:
    """White block ``width`` pixels wide (wider if one word needs it) with ``text`` wrapped in it."""
    face = font(size)
    pad, line_h = max(3, size // 3), round(1.3 * size)
    lines = _wrap(text, face, width - 2 * pad)
    block_w = max([width] + [_text_size(line, face)[0] + 2 * pad for line in lines])
    block = Image.new("RGB", (block_w, 2 * pad + line_h * len(lines)), "white")
    draw = ImageDraw.Draw(block)
    for row, line in enumerate(lines):
        draw.text((pad, pad + row * line_h), line, fill=colour, font=face)
    return block


# ---------------------------------------------------------------------------------------- legend

def background_class(class_names: Sequence[str]) -> int | None:
    """0 when class 0 is named background ('background', 'bg', '_background_', any case), else None."""
    if len(class_names) and str(class_names[0]).strip().lower() in BACKGROUND_NAMES:
        return 0
    return None


def _resolve_background(background: int | None | str, class_names: Sequence[str]) -> int | None:
    if isinstance(background, str):
        if background != AUTO:
            raise ValueError(f"background must be a class index, None or 'auto', got {background!r}")
        return background_class(class_names)
    if background is not None and not 0 <= int(background) < len(class_names):
        raise ValueError(f"background class {background} is not one of the {len(class_names)} classes")
    return None if background is None else int(background)


def class_areas(label: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) float64: the fraction of all of ``label``'s pixels (void included) in each class."""
    label = np.asarray(label)
    flat = label.reshape(-1)
    counts = np.bincount(flat if flat.dtype == np.uint8 else flat.astype(np.int64), minlength=256)[:num_classes]
    return counts / max(label.size, 1)


def _entries(areas: np.ndarray, min_area: float, exclude: Sequence[int]) -> list[tuple[int, list[float]]]:
    largest = areas.max(axis=1)
    keep = [c for c in range(len(areas)) if c not in exclude and largest[c] > 0 and largest[c] >= min_area]
    keep.sort(key=lambda c: (-largest[c], c))
    return [(c, [float(a) for a in areas[c]]) for c in keep]


def legend_entries(labels: Sequence[np.ndarray], num_classes: int, min_area: float = MIN_AREA,
                   exclude: Sequence[int] = ()) -> list[tuple[int, list[float]]]:
    """What a legend lists: ``[(class, [fraction of each of labels]), ...]`` for the classes (other than
    ``exclude``) covering at least ``min_area`` of at least one of ``labels``, largest first (by their
    largest fraction; ties by class index)."""
    areas = np.stack([class_areas(label, num_classes) for label in labels], axis=1)  # (C, len(labels))
    return _entries(areas, min_area, exclude)


def _percent(fraction: float) -> str:
    value = 100 * fraction
    if value >= 9.95:
        return f"{value:.0f}%"
    return f"{value:.1f}%" if value >= 0.095 else "<0.1%"


def legend(entries: Sequence[tuple[int, Sequence[float]]], class_names: Sequence[str], palette: np.ndarray,
           height: int, *, headers: Sequence[str] | None = None, empty: str = "no classes",
           min_height: int = 0, size: int | None = None) -> Image.Image:
    """A white column listing ``entries`` (from :func:`legend_entries`) as colour swatch, class name and
    percentages, with text sized for a picture ``height`` pixels tall (:func:`font_size`, or ``size``
    pixels); optional ``headers`` over the percentage columns; ``empty`` is written when there is nothing
    to list."""
    size = size or font_size(height)
    face, small = font(size), font(max(9, round(0.85 * size)))
    pad, swatch, line = max(4, size // 2), size, round(1.6 * size)
    name_w = max([_text_size(class_names[c], face)[0] for c, _ in entries] + [0])
    columns = max([len(values) for _, values in entries] + [len(headers or ())])
    cells = [[_percent(v) for v in values] for _, values in entries]
    col_w = [max([_text_size(row[i], face)[0] for row in cells if i < len(row)]
                 + [_text_size(headers[i], small)[0] if headers and i < len(headers) else 0]) for i in range(columns)]
    text_x = pad + swatch + pad
    width = text_x + name_w + sum(w + 2 * pad for w in col_w) + pad
    if not entries:
        width = max(width, _text_size(empty, face)[0] + 2 * pad)
    top = pad + (line if headers and entries else 0)
    out = Image.new("RGB", (width, max(min_height, top + line * max(len(entries), 1) + pad)), "white")
    draw = ImageDraw.Draw(out)
    if not entries:
        draw.text((pad, pad), empty, fill=_MUTED, font=face)
        return out

    def right_edges():
        x = text_x + name_w
        for w in col_w:
            x += 2 * pad + w
            yield x

    if headers:
        lift = (size - getattr(small, "size", size)) // 2  # the smaller header text centred on a row
        for x, header in zip(right_edges(), headers):
            draw.text((x - _text_size(header, small)[0], pad + lift), header, fill=_MUTED, font=small)
    for row, ((c, _), texts) in enumerate(zip(entries, cells)):
        y = top + row * line
        colour = tuple(int(v) for v in palette[c])
        draw.rectangle((pad, y, pad + swatch - 1, y + swatch - 1), fill=colour, outline=(96, 96, 96))
        draw.text((text_x, y), class_names[c], fill=_TEXT, font=face)
        for x, text in zip(right_edges(), texts):
            draw.text((x - _text_size(text, face)[0], y), text, fill=_MUTED, font=face)
    return out


# ---------------------------------------------------------------------------------- composition

def hstack(images: Sequence[Image.Image], gap: int = 0) -> Image.Image:
    """Images side by side, top-aligned, on white, ``gap`` pixels apart."""
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, max(im.height for im in images)), "white")
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return out


_hstack = hstack


def vstack(images: Sequence[Image.Image], gap: int = 0) -> Image.Image:
    """Images one above the other, left-aligned, on white, ``gap`` pixels apart."""
    height = sum(im.height for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (max(im.width for im in images), height), "white")
    y = 0
    for im in images:
        out.paste(im.convert("RGB"), (0, y))
        y += im.height + gap
    return out


def _check_image(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    if image.shape[:2] != np.shape(label):
        raise ValueError(f"image {image.shape[:2]} and label {np.shape(label)} differ in size")
    return image


def boundaries(label: np.ndarray, thickness: int = 1) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another label (the picture's edge is no boundary),
    widened to ``thickness`` pixels on each side of a boundary (into each pixel's own region)."""
    label = np.asarray(label)
    edge = np.zeros(label.shape, bool)
    vertical = label[1:] != label[:-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    horizontal = label[:, 1:] != label[:, :-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    for _ in range(int(thickness) - 1):  # a neighbour of a boundary pixel across the boundary is one too
        grown = edge.copy()
        grown[1:] |= edge[:-1]
        grown[:-1] |= edge[1:]
        grown[:, 1:] |= edge[:, :-1]
        grown[:, :-1] |= edge[:, 1:]
        edge = grown
    return edge


def contour_thickness(height: int, width: int) -> int:
    """Contour width in pixels for a picture of this size: 1, or 2 from 512 pixels on the short side."""
    return 2 if min(height, width) >= 512 else 1


def _blend(image: np.ndarray, label: np.ndarray, mask: np.ndarray, palette: np.ndarray,
           alpha: float) -> np.ndarray:
    """``image`` with the pixels of ``mask`` replaced by ``rint((1 - alpha) * image + alpha * colour)``,
    through a (class, channel, value) table, a band of rows at a time (12-megapixel photos included)."""
    values = np.arange(256, dtype=np.float64)[None, None, :]
    table = np.clip(np.rint((1 - alpha) * values + alpha * palette.astype(np.float64)[:, :, None]), 0, 255)
    table = table.astype(np.uint8).reshape(-1)  # index (class * 3 + channel) * 256 + value
    out = image.copy()
    channels = np.arange(3, dtype=np.intp) * 256
    rows = max(1, (1 << 18) // max(1, label.shape[1]))
    for y in range(0, label.shape[0], rows):
        band = mask[y:y + rows]
        if band.any():
            index = label[y:y + rows][band].astype(np.intp)[:, None] * 768 + channels + image[y:y + rows][band]
            out[y:y + rows][band] = table[index]
    return out


def overlay(image: np.ndarray, label: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            colours: Sequence[Sequence[int]] | None = None, *, background: int | None | str = AUTO,
            contour: bool | int = True, min_area: float = MIN_AREA) -> Image.Image:
    """RGB picture: ``image`` (H, W, 3) uint8 with the objects of ``label`` (H, W) tinted in their class
    colours, and to its right a legend of the classes found (largest first, with the share of the
    picture each covers).

    - Pixels of the ``background`` class, void pixels and values outside ``0..len(class_names)-1`` keep
      the photo's own colours; other pixels become ``(1 - alpha) * photo + alpha * colour`` (rounded).
    - ``background``: a class index, None (every class is tinted) or 'auto': class 0 if it is named
      'background' / 'bg' / '_background_' (any case), else None.
    - ``contour``: outline the tinted regions along every class boundary, inside each region, in the
      class colour times :data:`CONTOUR_SHADE`; True: 1 pixel wide, 2 from 512 pixels on the short
      side (:func:`contour_thickness`); an int: that many pixels; False: no outline.
    - ``min_area``: classes covering less than this fraction of the pixels are left out of the legend
      (they are still drawn). ``colours``: the classes' own colours (:func:`class_palette`), default VOC's.
    """
    image = _check_image(image, label)
    label = _check_label(label)
    num_classes = len(class_names)
    background = _resolve_background(background, class_names)
    palette = class_palette(colours)
    tinted = label < num_classes
    if background is not None:
        tinted &= label != background
    picture = _blend(image, label, tinted, palette, alpha)
    if contour:
        thickness = contour_thickness(*label.shape) if contour is True else int(contour)
        outline = tinted & boundaries(label, thickness)
        dark = np.rint(CONTOUR_SHADE * palette.astype(np.float64)).astype(np.uint8)
        picture[outline] = dark[label[outline]]
    exclude = () if background is None else (background,)
    areas = class_areas(label, num_classes)[:, None]
    entries = _entries(areas, min_area, exclude)
    found = set(np.nonzero(areas[:, 0])[0].tolist())
    empty = f"only {class_names[background]}" if background is not None and found <= {background} else \
        "no classes"
    if found - set(exclude) and not entries:
        empty = f"nothing above {_percent(min_area)}"
    side = legend(entries, class_names, palette, label.shape[0], empty=empty, min_height=label.shape[0])
    return hstack([Image.fromarray(picture), side])


def zoom_factor(height: int, width: int, min_tile: int = MIN_TILE, max_side: int = 4096) -> int:
    """The whole-number enlargement that brings the short side to at least ``min_tile`` pixels (1 if it is
    already), limited so that the long side stays within ``max_side`` (for very elongated images)."""
    short, long = min(height, width), max(height, width)
    if short <= 0 or short >= min_tile:
        return 1
    return max(1, min(math.ceil(min_tile / short), max_side // long))


def panel_font_size(tile_side: int) -> int:
    """Text size in a panel whose tiles are ``tile_side`` pixels on their short side: 14 up to 280 px,
    then 5% of it (a panel is a picture to read, its tiles at least :data:`MIN_TILE` pixels)."""
    return max(14, round(0.05 * tile_side))


def _enlarge(tile: Image.Image, factor: int) -> Image.Image:
    if factor == 1:
        return tile
    return tile.resize((tile.width * factor, tile.height * factor), Image.Resampling.NEAREST)


def panel(image: np.ndarray, gt: np.ndarray, pred: np.ndarray, class_names: Sequence[str],
          colours: Sequence[Sequence[int]] | None = None, title: str | None = None, *,
          min_area: float = MIN_AREA, min_tile: int = MIN_TILE) -> Image.Image:
    """RGB picture ``image | ground truth | prediction`` with captions, a legend and an optional title.

    ``image`` (H, W, 3) uint8; ``gt`` and ``pred`` (H, W) class indices (void 255 shows in VOC cream);
    ``colours``: the classes' own colours, default VOC's. Small images are enlarged by a whole factor
    (nearest neighbour: every pixel stays a square of one colour) so that each tile is at least
    ``min_tile`` pixels on its short side. ``title``: a line (wrapped if long) above the tiles, e.g.
    ``"fcn16s step 2500, shapes validation 17: mean IU 61.2%"``. The legend lists the classes covering at
    least ``min_area`` of the ground truth or of the prediction, with the share of each.
    """
    image = _check_image(image, gt)
    if np.shape(pred) != np.shape(gt):
        raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in size")
    gt, pred = _check_label(gt), _check_label(pred)
    factor = zoom_factor(*gt.shape, min_tile=min_tile)
    tiles = [_enlarge(tile, factor) for tile in (Image.fromarray(image), colorize(gt, colours),
                                                  colorize(pred, colours))]
    tile_h = tiles[0].height
    # text from the short side (the same for portrait and landscape); for all enlarged images alike
    size = panel_font_size(min(gt.shape) if factor == 1 else min_tile)
    gap = max(6, size // 2)
    columns = []
    for caption, tile in zip(("image", "ground truth", "prediction"), tiles):
        head = text_block(caption, tile.width, round(1.15 * size))
        columns.append(vstack([head, tile]))
    entries = legend_entries([gt, pred], len(class_names), min_area)
    side = legend(entries, class_names, class_palette(colours), tile_h, headers=("truth", "pred."),
                  empty="no classes", size=size)
    head_h = columns[0].height - tile_h
    side = vstack([Image.new("RGB", (side.width, head_h), "white"), side])  # aligned with the tiles
    row = hstack(columns + [side], gap=gap)
    if title:
        row = vstack([text_block(title, row.width, round(1.3 * size)), row])
    return row


# ------------------------------------------------------------------------------- learning curves

_SCORE_NAMES = {"pixel_acc": "pixel accuracy", "mean_acc": "mean accuracy", "mean_iu": "mean IU",
                "fw_iu": "f.w. IU"}


def _metrics_file(metrics_jsonl_path: str) -> str:
    path = os.fspath(metrics_jsonl_path)
    return os.path.join(path, "metrics.jsonl") if os.path.isdir(path) else path


def learning_curve_title(metrics_jsonl_path: str) -> str | None:
    """'fcn16s · shapes · preset shapes' from the ``config.json`` next to ``metrics.jsonl`` (a training
    workdir's), or None when there is none or it cannot be read."""
    path = os.path.join(os.path.dirname(os.path.abspath(_metrics_file(metrics_jsonl_path))), "config.json")
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    parts = [str(model["variant"])] if model.get("variant") else []
    if config.get("dataset"):
        parts.append(str(config["dataset"]))
    if config.get("preset"):
        parts.append(f"preset {config['preset']}")
    return " · ".join(parts) or None


def learning_curve_panels(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The panels :func:`plot_learning_curves` draws for these metrics records, in order: dicts with
    ``title``, ``keys`` (the series), ``labels`` (their legend names), ``percent`` (values shown x100)
    and ``ylabel``. Training loss (``train/*loss*``, ``val/*loss*``), learning rate (``train/lr``),
    validation scores (``val/*`` but speeds, losses and per-class IU) and per-class IU
    (``val/iu/<class>``), each only if present."""
    keys = sorted({k for r in records for k in r})
    per_class = list(dict.fromkeys(k for r in records for k in r if k.startswith("val/iu/")))  # class order
    order = {k: i for i, k in enumerate(_SCORE_NAMES)}
    scores = sorted((k for k in keys if k.startswith("val/") and k not in per_class and "per_s" not in k
                     and "loss" not in k), key=lambda k: (order.get(k[4:], len(order)), k))
    panels = [
        dict(title="training loss", keys=[k for k in keys if k.startswith(("train/", "val/")) and "loss" in k],
             labels=None, percent=False, ylabel="loss"),
        dict(title="learning rate", keys=[k for k in keys if k == "train/lr"], labels=["learning rate"],
             percent=False, ylabel="learning rate"),
        dict(title="validation", keys=scores, labels=[_SCORE_NAMES.get(k[4:], k[4:]) for k in scores],
             percent=True, ylabel="%"),
        dict(title="validation IU per class", keys=per_class, labels=[k[len("val/iu/"):] for k in per_class],
             percent=True, ylabel="IU %"),
    ]
    for p in panels:
        if p["labels"] is None:
            p["labels"] = list(p["keys"])
    return [p for p in panels if p["keys"]]


def plot_learning_curves(metrics_jsonl_path: str, out_png: str, title: str | None = None) -> str:
    """Plots a training run's ``metrics.jsonl`` (or its workdir) to ``out_png`` and returns its path.

    Lines are ``{"step": int, "train/loss": float, ..., "val/mean_iu": float, ...}``; the panels are
    :func:`learning_curve_panels`' (loss, learning rate, validation scores in percent with the best mean
    IU marked, per-class IU). ``title``: the figure's title; None: :func:`learning_curve_title` (variant,
    dataset and preset from the run's ``config.json``), if there is one.
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state, no display needed

    from fcn_jax.summary import read_metrics
    records = read_metrics(metrics_jsonl_path)
    panels = learning_curve_panels(records)
    if not panels:
        raise ValueError(f"{metrics_jsonl_path}: no train/*loss*, train/lr or val/* series to plot")
    if title is None:
        title = learning_curve_title(metrics_jsonl_path)
    cols = 2 if len(panels) == 4 else len(panels)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows + (0.4 if title else 0)), layout="constrained")
    if title:
        fig.suptitle(title, fontsize="x-large")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, spec in zip(axes, panels):
        scale = 100.0 if spec["percent"] else 1.0
        many = len(spec["keys"]) > 10
        for i, (key, name) in enumerate(zip(spec["keys"], spec["labels"])):
            points = [(r["step"], scale * r[key]) for r in records
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if not points:
                continue
            style = dict(color=f"C{i % 10}", linestyle=("-", "--", ":")[i // 10 % 3]) if many else {}
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, markersize=3, label=name, **style)
            if key == "val/mean_iu":
                step, best = max(points, key=lambda p: (p[1], -p[0]))
                steps = [p[0] for p in points]
                late = step > (min(steps) + max(steps)) / 2  # keep the label inside the axes
                ax.annotate(f"best {best:.1f}% (step {step})", (step, best), xytext=(-4 if late else 4, 8),
                            textcoords="offset points", ha="right" if late else "left", fontsize="small")
        ax.set(title=spec["title"], xlabel="step", ylabel=spec["ylabel"])
        ax.grid(alpha=0.3)
        if spec["title"] == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if spec["title"] == "validation":
            ax.margins(y=0.12)
        if len(spec["keys"]) > 1 or spec["title"] == "validation":
            if spec["title"].startswith("validation IU"):
                ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5),
                          ncol=2 if len(spec["keys"]) > 12 else 1)
            else:
                ax.legend(fontsize="small")
    buffer = BytesIO()  # drawn in memory, then written whole (fcn_jax.io): never a truncated picture
    fig.savefig(buffer, dpi=100, format=os.path.splitext(out_png)[1][1:].lower() or "png")
    write_bytes(out_png, buffer.getvalue())
    return out_png
