"""Palette, colourised labels, overlays, legends, panels, learning curves and docs/make_pictures.py."""
import importlib.util
import json
import os

import numpy as np
import pytest
from PIL import Image

from fcn_jax import viz
from fcn_jax.viz import (CONTOUR_SHADE, PALETTE, colorize, legend_entries, overlay, panel, plot_learning_curves,
                         voc_palette)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["background", "aeroplane", "bicycle", "bird"]


def colours(image):
    return {tuple(int(v) for v in c) for c in np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)}


def four_neighbour_boundary(label):
    """Pixels with a 4-neighbour (inside the picture) of another value, by padding with the edge."""
    padded = np.pad(label.astype(np.int64), 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    return ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))


def first_rows(picture, palette_colours):
    """For each colour, the first row of ``picture`` where it occurs (None if nowhere)."""
    pixels = np.asarray(picture.convert("RGB"))
    rows = []
    for colour in palette_colours:
        hits = np.nonzero((pixels == np.asarray(colour)).all(-1).any(-1))[0]
        rows.append(int(hits[0]) if len(hits) else None)
    return rows


def locate(picture, tile):
    """Every (y, x) where ``tile`` (h, w, 3) occurs in ``picture`` exactly."""
    pixels = np.asarray(picture.convert("RGB"))
    h, w = tile.shape[:2]
    found = []
    for y, x in np.argwhere((pixels[:pixels.shape[0] - h + 1, :pixels.shape[1] - w + 1] == tile[0, 0]).all(-1)):
        if (pixels[y, x:x + w] == tile[0]).all() and (pixels[y:y + h, x:x + w] == tile).all():
            found.append((int(y), int(x)))
    return found


def scene(h=30, w=40, seed=1):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.int64)
    label[2:12, 3:20] = 1
    label[8:20, 15:30] = 2  # touches and overlaps class 1: a 1 | 2 boundary as well as 1 | 0 and 2 | 0
    label[25:, :6] = 3  # on the picture's edge: the edge is no boundary
    label[0, w - 1] = 255  # void
    label[h - 1, w - 1] = 9  # no such class
    return image, label


def test_voc_palette_known_colours():
    assert voc_palette().shape == (256, 3) and PALETTE.dtype == np.uint8
    expected = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
                20: (0, 64, 128), 255: (224, 224, 192)}
    for index, colour in expected.items():
        assert tuple(PALETTE[index]) == colour
    assert len({tuple(c) for c in PALETTE}) == 256


def test_colorize_is_a_palette_png_of_indices(tmp_path):
    label = np.random.default_rng(0).integers(0, 4, (13, 17))
    label[0, 0] = 255
    image = colorize(label)
    assert image.mode == "P" and image.size == (17, 13)
    image.save(tmp_path / "l.png")
    with Image.open(tmp_path / "l.png") as back:
        assert back.mode == "P"
        np.testing.assert_array_equal(np.asarray(back), label)
        np.testing.assert_array_equal(np.asarray(back.convert("RGB")), PALETTE[label])
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError):
        colorize(np.full((2, 2), 256))


@pytest.mark.parametrize("alpha", [0.5, 0.3])
def test_overlay_tints_objects_keeps_the_photo_and_outlines_boundaries(alpha):
    image, label = scene()
    h, w = label.shape
    out = overlay(image, label, NAMES, alpha=alpha)
    assert out.mode == "RGB" and out.height >= h and out.width > w
    pixels = np.asarray(out)[:h, :w]
    tinted = (label > 0) & (label < len(NAMES))  # not background, not void, not beyond the classes
    np.testing.assert_array_equal(pixels[~tinted], image[~tinted])  # the photo exactly
    colour = PALETTE[np.minimum(label, 255)].astype(np.float64)
    contour = tinted & four_neighbour_boundary(label)
    assert contour.any() and (tinted & ~contour).any()
    assert not contour[26:, 0].any() and not contour[h - 1, 1:5].any()  # the picture's edge is no boundary
    blend = np.clip(np.rint((1 - alpha) * image + alpha * colour), 0, 255).astype(np.uint8)
    dark = np.rint(CONTOUR_SHADE * colour).astype(np.uint8)
    np.testing.assert_array_equal(pixels[tinted & ~contour], blend[tinted & ~contour])
    np.testing.assert_array_equal(pixels[contour], dark[contour])
    # without contours every tinted pixel is the blend
    plain = np.asarray(overlay(image, label, NAMES, alpha=alpha, contour=False))[:h, :w]
    np.testing.assert_array_equal(plain[tinted], blend[tinted])
    np.testing.assert_array_equal(plain[~tinted], image[~tinted])
    with pytest.raises(ValueError):
        overlay(image[:5], label, NAMES)


def test_overlay_contour_thickness_and_background_choice():
    image, label = scene()
    h, w = label.shape
    tinted = (label > 0) & (label < len(NAMES))
    one = tinted & four_neighbour_boundary(label)
    wide = np.asarray(overlay(image, label, NAMES, contour=2))[:h, :w]
    dark = np.rint(CONTOUR_SHADE * PALETTE[np.minimum(label, 255)].astype(np.float64)).astype(np.uint8)
    two = tinted & (wide == dark).all(-1) & (dark != image).any(-1)
    near = np.pad(one, 1)
    near = near[1:-1, 1:-1] | near[:-2, 1:-1] | near[2:, 1:-1] | near[1:-1, :-2] | near[1:-1, 2:]
    assert (two >= one).all() and two.sum() > one.sum() and not (two & ~near).any()  # one pixel further in
    np.testing.assert_array_equal(wide[~tinted], image[~tinted])
    assert viz.contour_thickness(300, 4000) == 1 and viz.contour_thickness(512, 600) == 2
    # class 0 is background only by name; otherwise (unnamed classes) it is tinted like any class
    assert viz.background_class(["BG", "x"]) == 0 and viz.background_class(["_background_"]) == 0
    assert viz.background_class(["class_0", "class_1"]) is None and viz.background_class(["sky", "bg"]) is None
    unnamed = [f"class_{i}" for i in range(4)]
    out = np.asarray(overlay(image, label, unnamed, contour=False))[:h, :w]
    blend = np.rint(0.5 * image + 0.5 * PALETTE[0].astype(float)).astype(np.uint8)
    np.testing.assert_array_equal(out[label == 0], blend[label == 0])
    explicit = np.asarray(overlay(image, label, unnamed, contour=False, background=0))[:h, :w]
    np.testing.assert_array_equal(explicit[label == 0], image[label == 0])
    mine = np.asarray(overlay(image, label, NAMES, contour=False, background=2))[:h, :w]
    np.testing.assert_array_equal(mine[label == 2], image[label == 2])
    assert (mine[label == 0] != image[label == 0]).any()
    with pytest.raises(ValueError):
        overlay(image, label, NAMES, background=4)


def test_legend_lists_classes_above_min_area_by_area():
    h, w = 100, 100
    image = np.full((h, w, 3), 200, np.uint8)
    label = np.zeros((h, w), np.int64)
    label[:30] = 3  # 30%
    label[40:50] = 1  # 10%
    label[90, :5] = 2  # 0.05%: below min_area
    label[99, :20] = 255  # void counts in the picture's area, not as a class
    areas = np.bincount(label.ravel(), minlength=256) / label.size
    entries = legend_entries([label], len(NAMES), 0.001, exclude=(0,))
    assert entries == [(3, [areas[3]]), (1, [areas[1]])]
    assert [c for c, _ in legend_entries([label], len(NAMES), 0.0001, exclude=(0,))] == [3, 1, 2]
    assert [c for c, _ in legend_entries([label], len(NAMES), 0.001)] == [0, 3, 1]
    out = overlay(image, label, NAMES, min_area=0.001)
    side = out.crop((w, 0, out.width, out.height))
    rows = first_rows(side, [PALETTE[3], PALETTE[1], PALETTE[2], PALETTE[0]])
    assert rows[0] is not None and rows[1] is not None and rows[0] < rows[1]  # by area, largest first
    assert rows[2] is None and rows[3] is None  # below min_area; background is not tinted, not listed
    rows = first_rows(overlay(image, label, NAMES, min_area=0.0001).crop((w, 0, out.width, out.height)),
                      [PALETTE[3], PALETTE[1], PALETTE[2]])
    assert rows[0] < rows[1] < rows[2]
    # nothing to list: still a legend column beside the picture
    only_background = overlay(image, np.zeros((h, w), np.int64), NAMES)
    assert only_background.width > w and colours(only_background.crop((w, 0, only_background.width, h))) > {
        (255, 255, 255)}
    assert overlay(image[:1, :1], np.zeros((1, 1)), NAMES).width > 1


def test_legend_grows_with_the_image():
    def measure(size):
        image = np.full((size, size, 3), 90, np.uint8)
        label = np.zeros((size, size), np.int64)
        label[: size // 2, : size // 2] = 1
        out = overlay(image, label, NAMES)
        side = np.asarray(out)[:, size:]
        swatch = (side == PALETTE[1]).all(-1)
        return out.width - size, int(swatch.any(1).sum()), int(swatch.any(0).sum())

    sizes = [80, 400, 4000]
    measured = [measure(s) for s in sizes]
    for (w0, h0, s0), (w1, h1, s1) in zip(measured, measured[1:]):
        assert w1 > w0 and h1 > h0 and s1 > s0
    assert measured[0][1] >= 9  # readable at 80 px
    assert 100 <= measured[-1][1] <= 200  # and proportionate at 4000 px
    assert viz.font_size(80) == 11 and viz.font_size(4000) == 140
    assert viz.font(30).getbbox("Hg")[3] > viz.font(11).getbbox("Hg")[3]


def test_panel_enlarges_small_images_and_shows_truth_and_prediction():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (24, 50, 3), dtype=np.uint8)
    gt = np.full((24, 50), 1)
    gt[0] = 255
    gt[10:, :10] = 2
    pred = np.full((24, 50), 3)
    out = panel(image, gt, pred, NAMES)
    factor = viz.zoom_factor(24, 50)
    assert factor == 11 and 24 * factor >= 256
    assert out.mode == "RGB" and out.width > 3 * 50 * factor and out.height > 24 * factor
    found = colours(out)
    for c in (1, 2, 3, 255):
        assert tuple(PALETTE[c]) in found
    big = np.repeat(np.repeat(image, factor, 0), factor, 1)  # nearest neighbour, whole pixels
    truth = np.asarray(colorize(np.repeat(np.repeat(gt, factor, 0), factor, 1)).convert("RGB"))
    guess = np.asarray(colorize(np.repeat(np.repeat(pred, factor, 0), factor, 1)).convert("RGB"))
    (y0, x0), = locate(out, big)
    (y1, x1), = locate(out, truth)
    (y2, x2), = locate(out, guess)
    assert x0 == 0 and y0 == y1 == y2 and x0 + big.shape[1] < x1 < x1 + truth.shape[1] < x2  # side by side
    rows = np.asarray(out)
    # a title adds a line above; the tiles stay as they were
    titled = panel(image, gt, pred, NAMES, title="fcn16s step 2500 — shapes val 000017: mean IU 61.2%")
    assert titled.width == out.width and titled.height > out.height
    np.testing.assert_array_equal(np.asarray(titled)[titled.height - out.height:], rows)
    # a large image is not resized
    large = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    out = panel(large, np.zeros((300, 260)), np.zeros((300, 260)), NAMES)
    assert len(locate(out, large)) == 1
    assert viz.zoom_factor(1, 1000) == 4  # elongated images are enlarged less
    with pytest.raises(ValueError):
        panel(image, gt, pred[:3], NAMES)


def write_run(tmp_path, per_class=True):
    lines = [json.dumps({"step": s, "train/loss": 10.0 / s, "train/lr": 1e-3 * (1 - s / 40),
                         "train/images_per_s": 5.0}) for s in range(1, 40)]
    for s in (10, 20, 30):
        record = {"step": s, "val/mean_iu": s / 100, "val/pixel_acc": 0.5, "val/images_per_s": 3.0}
        if per_class:
            record.update({"val/iu/background": 0.9, "val/iu/circle": s / 50})
        lines.append(json.dumps(record))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n\n")
    (tmp_path / "config.json").write_text(json.dumps({"model": {"variant": "fcn16s"}, "dataset": "shapes",
                                                       "preset": "shapes"}))


def test_learning_curves(tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    write_run(tmp_path)
    figures = []
    savefig = Figure.savefig

    def record(self, *args, **kwargs):  # the first figure is drawn; the others only looked at
        figures.append(self)
        return savefig(self, *args, **kwargs) if len(figures) == 1 else None

    monkeypatch.setattr(Figure, "savefig", record)
    out = plot_learning_curves(str(tmp_path), str(tmp_path / "plots" / "curves.png"))  # the workdir
    with Image.open(out) as image:
        assert image.width > image.height > 100
    fig = figures[-1]
    assert fig.get_suptitle() == "fcn16s · shapes · preset shapes"
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["training loss", "learning rate", "validation",
                                              "validation IU per class"]
    lines = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    assert set(lines) == {"train/loss", "learning rate", "mean IU", "pixel accuracy", "background", "circle"}
    np.testing.assert_allclose(lines["mean IU"].get_ydata(), [10, 20, 30])  # percent
    np.testing.assert_allclose(lines["circle"].get_ydata(), [20, 40, 60])
    plot_learning_curves(str(tmp_path / "metrics.jsonl"), str(tmp_path / "b.png"), title="my run")
    assert figures[-1].get_suptitle() == "my run"
    # the panels and title without drawing: no per-class panel when nothing logs it, no config, no title
    other = tmp_path / "other"
    other.mkdir()
    write_run(other, per_class=False)
    os.remove(other / "config.json")
    assert viz.learning_curve_title(str(other)) is None
    from fcn_jax.summary import read_metrics
    panels = viz.learning_curve_panels(read_metrics(str(other)))
    assert [(p["title"], p["keys"], p["percent"]) for p in panels] == [
        ("training loss", ["train/loss"], False), ("learning rate", ["train/lr"], False),
        ("validation", ["val/pixel_acc", "val/mean_iu"], True)]  # score.py's order
    plot_learning_curves(str(other), str(other / "c.png"))
    assert figures[-1].get_suptitle() == "" and len([a for a in figures[-1].axes if a.get_visible()]) == 3
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    with pytest.raises(ValueError, match="no train"):
        plot_learning_curves(str(empty), str(tmp_path / "x.png"))


def load_script():
    spec = importlib.util.spec_from_file_location("make_pictures", os.path.join(ROOT, "docs", "make_pictures.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_make_pictures_end_to_end(tmp_path):
    """docs/make_pictures.py on a tiny random width-1/32 checkpoint and shapes/tiny, writing to tmp."""
    from fcn_jax import checkpoint, data
    from fcn_jax.config import ModelConfig
    from test_evaluate import random_variables  # random score layers: predictions of several classes

    data_dir = str(tmp_path / "tfds")
    data.prepare("shapes/tiny", data_dir)
    config = ModelConfig("fcn32s", len(data.SHAPES_CLASSES), width=1 / 32, padding="same")
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model(str(ckpt), random_variables(config.build()),
                          checkpoint.model_meta(config, data.SHAPES_CLASSES, "torchvision", step=12,
                                                config={"dataset": "shapes/tiny", "data_dir": data_dir},
                                                metrics={"mean_iu": 0.25, "pixel_acc": 0.8}))
    write_run(ckpt)
    script = load_script()
    out = tmp_path / "docs"
    # one image (one compilation): its panel, the example input and its overlay
    assert script.main(["--workdir", str(ckpt), "--out", str(out), "--indices", "0", "--examples", "1",
                        "--overlays"]) == 0
    source = data.load_split("shapes/tiny", "validation", data_dir)
    with Image.open(out / "shapes_predictions.png") as grid:
        assert grid.mode == "RGB" and grid.width > 3 * 256 and grid.height > 256
    with Image.open(out / "learning_curves.png") as curves:
        assert curves.width > curves.height
    with Image.open(out / "examples" / "shapes_0.png") as example:
        np.testing.assert_array_equal(np.asarray(example), np.asarray(source[0]["image"]))
    with Image.open(out / "shapes_overlays.png") as overlays:
        assert overlays.height > 256
    assert sorted(os.listdir(out)) == ["examples", "learning_curves.png", "shapes_overlays.png",
                                       "shapes_predictions.png"]


def test_make_pictures_helpers():
    script = load_script()
    gt = np.array([[0, 1], [1, 255]])
    mean_iu, pixel_acc = script.image_scores(gt, np.array([[0, 1], [0, 0]]), 2)  # void skipped
    assert mean_iu == pytest.approx((1 / 2 + 1 / 2) / 2) and pixel_acc == pytest.approx(2 / 3)
    source = [{"segmentation": np.array(label)} for label in
              ([[0, 1]], [[1, 2]], [[0, 0]], [[3, 2], [1, 255]], [[2, 2]])]
    assert script.pick(source, 2, 2, 0, 4) == [1, 3]  # at least two object classes
    assert script.pick(source, 3, 2, 0, 4) == [0, 1, 3]  # too few: the first others fill up
    assert script.pick(source, 2, 2, None, 4) == [0, 1]  # without a background class 0 counts
    args = script.parse_args([])
    assert args.workdir == "runs/fcn16s" and args.step == "best" and args.out == os.path.join(ROOT, "docs")
