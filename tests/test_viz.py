"""Palette, colourised labels, overlays, panels and learning curves."""
import json

import numpy as np
import pytest
from PIL import Image

from fcn_jax.viz import PALETTE, colorize, overlay, panel, plot_learning_curves, voc_palette

NAMES = ["background", "aeroplane", "bicycle", "bird"]


def colours(image):
    return {tuple(int(v) for v in c) for c in np.asarray(image.convert("RGB")).reshape(-1, 3)}


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


def test_overlay_blends_and_lists_present_classes():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = np.zeros((30, 40), np.int64)
    label[:10] = 1
    label[10:20] = 2
    label[29, 39] = 255  # void: left as the image
    out = overlay(image, label, NAMES, alpha=0.5)
    assert out.mode == "RGB" and out.height >= 30 and out.width > 40
    pixels = np.asarray(out)
    want = np.rint(0.5 * image[0, 0] + 0.5 * PALETTE[1].astype(float))
    np.testing.assert_array_equal(pixels[0, 0], want)
    np.testing.assert_array_equal(pixels[29, 39], image[29, 39])
    legend = colours(out.crop((40, 0, out.width, out.height)))
    assert tuple(PALETTE[1]) in legend and tuple(PALETTE[2]) in legend
    assert tuple(PALETTE[3]) not in legend  # bird is absent
    with pytest.raises(ValueError):
        overlay(image[:5], label, NAMES)


def test_panel_shows_image_truth_prediction():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (24, 50, 3), dtype=np.uint8)
    gt = np.full((24, 50), 1)
    gt[0] = 255
    pred = np.full((24, 50), 3)
    out = panel(image, gt, pred, NAMES)
    assert out.mode == "RGB" and out.width > 3 * 50
    found = colours(out)
    for c in (1, 3, 255):
        assert tuple(PALETTE[c]) in found
    rows = np.asarray(out)
    assert any((rows[y:y + 24, 0:50] == image).all() for y in range(out.height - 23))  # the image, unchanged
    with pytest.raises(ValueError):
        panel(image, gt, pred[:3], NAMES)


def test_learning_curves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "train/loss": 10.0 / s, "train/images_per_s": 5.0}) for s in range(1, 40)]
    lines += [json.dumps({"step": s, "val/mean_iu": s / 100, "val/pixel_acc": 0.5, "val/images_per_s": 3.0})
              for s in (10, 20, 30)]
    path.write_text("\n".join(lines) + "\n\n")
    out = plot_learning_curves(str(tmp_path), str(tmp_path / "plots" / "curves.png"))  # the workdir
    with Image.open(out) as image:
        assert image.width > image.height > 100
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"step": 1, "lr": 0.1}) + "\n")
    with pytest.raises(ValueError, match="no train"):
        plot_learning_curves(str(empty), str(tmp_path / "x.png"))
