"""Folder datasets (``folder:DIR``): layouts, mask encodings, void and binary options, class discovery,
validation errors, change detection, pixel counts and the ``fcn_jax.data`` integration.

Every folder is written here with PIL in the real file formats; expected values come from the NumPy
arrays written, never from the code under test. Images are tiny (8..40 px) and nothing compiles.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from fcn_jax import data
from fcn_jax.data import DataError, folder

PALETTE = np.random.default_rng(1).integers(0, 256, 768).tolist()  # VOC-like: 256 colours, ignored on reading
COLOURS = ((0, 0, 0), (200, 10, 10), (10, 200, 10), (10, 10, 200))
VOID_COLOUR = (224, 224, 192)


# ------------------------------------------------------------------------------------------------
# Writing folders.

def save_mask(path, labels: np.ndarray, encoding: str = "palette") -> None:
    """Writes (H, W) label values in ``encoding`` (RGB colours from COLOURS, 255 -> VOID_COLOUR).

    GIFs are written with optimize=False: PIL's GIF writer otherwise renumbers the palette indices."""
    if encoding == "palette":
        image = Image.fromarray(labels.astype(np.uint8), "P")
        image.putpalette(PALETTE)
    elif encoding == "gray":
        image = Image.fromarray(labels.astype(np.uint8), "L")
    elif encoding == "gray16":
        image = Image.fromarray(labels.astype(np.uint16))
        assert image.mode == "I;16"
    elif encoding == "rgb_equal":
        image = Image.fromarray(np.repeat(labels.astype(np.uint8)[..., None], 3, axis=2), "RGB")
    elif encoding in ("rgb", "rgba"):
        table = np.zeros((256, 3), np.uint8)
        table[: len(COLOURS)] = COLOURS
        table[255] = VOID_COLOUR
        rgb = table[labels]
        if encoding == "rgba":
            rgb = np.concatenate([rgb, np.full(labels.shape + (1,), 255, np.uint8)], axis=2)
        image = Image.fromarray(rgb)
    else:
        raise ValueError(encoding)
    image.save(path, **({"optimize": False} if str(path).endswith(".gif") else {}))


def example(rng: np.random.Generator, num_classes: int = 3, size: tuple[int, int] | None = None):
    """A random (image, labels) pair: every class present, a row of void (255)."""
    height, width = size or (int(rng.integers(8, 24)), int(rng.integers(8, 24)))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, num_classes, (height, width)).astype(np.uint8)
    labels[-1, :num_classes] = np.arange(num_classes)
    labels[0] = 255
    return image, labels


def write_pairs(images_dir, masks_dir, pairs: dict, encoding: str = "palette", image_ext: str = ".png") -> None:
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(masks_dir, exist_ok=True)
    for stem, (image, labels) in pairs.items():
        Image.fromarray(image).save(os.path.join(images_dir, stem + image_ext))
        save_mask(os.path.join(masks_dir, stem + ".png"), labels, encoding)


def write_flat(root, n: int, *, encoding: str = "palette", num_classes: int = 3, seed: int = 0,
               stems: list[str] | None = None) -> dict:
    """n pairs in root/images, root/masks (PNG images: lossless, so they compare exactly)."""
    rng = np.random.default_rng(seed)
    stems = stems or [f"img_{i:03d}" for i in range(n)]
    pairs = {stem: example(rng, num_classes) for stem in stems}
    write_pairs(os.path.join(root, "images"), os.path.join(root, "masks"), pairs, encoding)
    return pairs


def write_classes(root, lines: list[str]) -> str:
    path = os.path.join(root, "classes.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def assert_examples(source, pairs: dict) -> None:
    """Every example of ``source`` equals the arrays written for its stem."""
    assert len(source) == len({source[i]["file_name"] for i in range(len(source))})
    for i in range(len(source)):
        ex = source[i]
        image, labels = pairs[ex["file_name"]]
        assert ex["image"].dtype == np.uint8 and ex["segmentation"].dtype == np.uint8
        np.testing.assert_array_equal(ex["image"], image)
        np.testing.assert_array_equal(ex["segmentation"], labels)


def expected_random_split(stems) -> tuple[set, set]:
    """The documented rule: sorted stems, default_rng(0).permutation, first max(1, round(0.1 n)) are val."""
    ordered = sorted(stems)
    n = len(ordered)
    permutation = np.random.default_rng(0).permutation(n)
    k = max(1, round(0.1 * n))
    return {ordered[i] for i in permutation[k:]}, {ordered[i] for i in permutation[:k]}


def one_line_error(fn, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# ------------------------------------------------------------------------------------------------
# Layouts.

@pytest.mark.parametrize("n, num_val", [(2, 1), (10, 1), (25, 2), (30, 3)])
def test_random_split_sizes_and_membership(tmp_path, n, num_val):
    pairs = write_flat(tmp_path, n)
    ds = folder.FolderDataset(tmp_path, progress=False)
    train, val = expected_random_split(pairs)
    assert len(val) == num_val
    assert set(ds.stems["train"]) == train and set(ds.stems["val"]) == val
    assert ds.splits == {"train": n - num_val, "val": num_val}
    assert ds.split_method == f"random 90/10 split (seed 0) of {n} images"
    assert_examples(ds.source("train"), pairs)
    assert_examples(ds.source("val"), pairs)


def test_random_split_does_not_depend_on_file_creation_order(tmp_path):
    stems = [f"s{i}" for i in range(23)]
    write_flat(tmp_path / "a", len(stems), stems=stems)
    write_flat(tmp_path / "b", len(stems), stems=stems[::-1])  # files created in the opposite order
    a = folder.FolderDataset(tmp_path / "a", progress=False)
    assert a.stems == folder.FolderDataset(tmp_path / "b", progress=False).stems
    train, val = expected_random_split(stems)
    assert (set(a.stems["train"]), set(a.stems["val"])) == (train, val)
    assert folder.FolderDataset(tmp_path / "a", progress=False).stems == a.stems  # and from one scan to the next


def test_random_split_needs_two_images(tmp_path):
    write_flat(tmp_path, 1)
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images"), "at least 2")


def test_directory_layout(tmp_path):
    rng = np.random.default_rng(2)
    train = {f"t{i}": example(rng) for i in range(4)}
    val = {"v0": example(rng), "t0": example(rng)}  # a stem may recur across split directories
    write_pairs(tmp_path / "images" / "train", tmp_path / "masks" / "train", train)
    write_pairs(tmp_path / "images" / "val", tmp_path / "masks" / "val", val)
    (tmp_path / "train.txt").write_text("t0\n")  # ignored: directories take precedence
    (tmp_path / "images" / "train" / "notes.txt").write_text("not an image")
    ds = folder.FolderDataset(tmp_path, progress=False)
    assert ds.split_method == "directories images/{train,val}"
    assert ds.stems == {"train": ("t0", "t1", "t2", "t3"), "val": ("t0", "v0")}
    assert_examples(ds.source("train"), train)
    assert_examples(ds.source("val"), val)
    assert any("ignored" in note for note in ds.notes)


def test_directory_layout_errors(tmp_path):
    rng = np.random.default_rng(3)
    write_pairs(tmp_path / "images" / "train", tmp_path / "masks" / "train", {"a": example(rng)})
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images" / "val"),
                   "no such directory")
    os.makedirs(tmp_path / "images" / "val")
    os.makedirs(tmp_path / "masks" / "val")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images" / "val"),
                   "split 'val' is empty")
    write_pairs(tmp_path / "images", tmp_path / "masks", {"stray": example(rng)})
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images"),
                   "stray.png", "move them into train/ or val/")


def test_list_layout(tmp_path):
    pairs = write_flat(tmp_path, 6)
    (tmp_path / "train.txt").write_text("# training stems\nimg_004\n\nimg_000\nimg_002.png\n")
    (tmp_path / "val.txt").write_text("img_001\nimg_003\n")
    os.remove(tmp_path / "masks" / "img_005.png")  # not listed: needs no mask
    ds = folder.FolderDataset(tmp_path, progress=False)
    assert ds.split_method == "lists train.txt / val.txt"
    assert ds.stems == {"train": ("img_004", "img_000", "img_002"), "val": ("img_001", "img_003")}  # list order
    assert_examples(ds.source("train"), pairs)
    assert_examples(ds.source("val"), pairs)
    assert any("1 image(s) listed in neither" in note for note in ds.notes)


def test_list_layout_errors(tmp_path):
    write_flat(tmp_path, 4)
    (tmp_path / "train.txt").write_text("img_000\n")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "val.txt"), "missing")
    (tmp_path / "val.txt").write_text("img_001\n\nimg_009\n")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), f"{tmp_path / 'val.txt'}:3",
                   "'img_009' has no image")
    (tmp_path / "val.txt").write_text("img_001\nimg_001\n")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), f"{tmp_path / 'val.txt'}:2",
                   "listed twice")
    (tmp_path / "val.txt").write_text("# nothing\n")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "val.txt"),
                   "split 'val' is empty")
    (tmp_path / "val.txt").write_text("img_001\n")
    os.remove(tmp_path / "masks" / "img_000.png")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "train.txt"),
                   "img_000.png", "no mask")


# ------------------------------------------------------------------------------------------------
# Mask encodings, void, binary, classes.

@pytest.mark.parametrize("encoding, kind", [("palette", "palette"), ("gray", "grayscale"), ("gray16", "grayscale"),
                                            ("rgb_equal", "grayscale")])
def test_index_encodings(tmp_path, encoding, kind):
    pairs = write_flat(tmp_path, 5, encoding=encoding, num_classes=4)
    ds = folder.FolderDataset(tmp_path, progress=False)
    assert ds.class_names == ("class_0", "class_1", "class_2", "class_3") and ds.colours is None
    assert ds.mask_kinds[kind] == 5 and sum(ds.mask_kinds.values()) == 5
    assert_examples(ds.source("train"), pairs)
    assert_examples(ds.source("val"), pairs)


@pytest.mark.parametrize("encoding", ["rgb", "rgba"])
def test_colour_masks_through_classes_txt(tmp_path, encoding):
    pairs = write_flat(tmp_path, 5, encoding=encoding, num_classes=4)
    write_classes(tmp_path, ["# name R G B", "background 0 0 0", "red thing 200 10 10", "green 10 200 10",
                             "blue 10 10 200", "", "void 224 224 192"])
    ds = folder.FolderDataset(tmp_path, progress=False)
    assert ds.class_names == ("background", "red thing", "green", "blue")
    assert ds.colours == COLOURS and ds.void_colour == VOID_COLOUR
    assert ds.mask_kinds["colour"] == 5
    assert_examples(ds.source("train"), pairs)
    assert "RGB colour" in ds.describe()


def test_colour_mask_errors(tmp_path):
    pairs = write_flat(tmp_path, 3, encoding="rgb", num_classes=4)
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks"),
                   "needs `name R G B` lines")
    write_classes(tmp_path, ["background 0 0 0", "red 200 10 10", "green 10 200 10", "blue 10 10 200"])
    first = sorted(pairs)[0]  # void pixels (row 0) have a colour classes.txt lacks
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / f"{first}.png"),
                   f"colour {VOID_COLOUR} at pixel (x=0, y=0)", "no `void R G B` line")
    write_classes(tmp_path, ["background 0 0 0", "red 200 10 10", "green 10 200 10", "void 224 224 192"])
    image, labels = pairs[first]
    x = int(np.argmax(labels[1:] == 3) % labels.shape[1])
    y = 1 + int(np.argmax(labels[1:] == 3) // labels.shape[1])
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / f"{first}.png"),
                   f"colour {COLOURS[3]} at pixel (x={x}, y={y})", "nor the void colour")


def test_binary_masks(tmp_path):
    rng = np.random.default_rng(4)
    pairs, expected = {}, {}
    for i in range(5):
        image, labels = example(rng, 2)
        pairs[f"b{i}"] = (image, (labels == 1).astype(np.uint8) * 255)  # 0/255 foreground masks
        expected[f"b{i}"] = (image, (labels == 1).astype(np.uint8))
    write_pairs(tmp_path / "images", tmp_path / "masks", pairs, "gray")
    message = one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks"),
                             "masks hold only 0 and 255 (the void value)", "binary=True", "--binary-masks",
                             "--void-value")
    assert message == (f"{tmp_path / 'masks'}: masks hold only 0 and 255 (the void value): for binary 0/255 masks "
                       "pass binary=True (train.py --binary-masks); for another void value pass void=... "
                       "(--void-value)")
    ds = folder.FolderDataset(tmp_path, binary=True, progress=False)
    assert ds.class_names == ("background", "foreground") and ds.mask_kinds["binary"] == 5
    assert_examples(ds.source("train"), expected)
    assert_examples(ds.source("val"), expected)
    write_classes(tmp_path, ["sky", "not sky"])
    assert folder.FolderDataset(tmp_path, binary=True, progress=False).class_names == ("sky", "not sky")
    write_classes(tmp_path, ["a", "b", "c"])
    one_line_error(lambda: folder.FolderDataset(tmp_path, binary=True, progress=False),
                   str(tmp_path / "classes.txt"), "binary masks have 2")
    one_line_error(lambda: folder.FolderDataset(tmp_path, binary=True, void=0, progress=False), "void=0")


def test_binary_reads_colour_and_palette_masks_by_colour(tmp_path):
    labels = np.array([[0, 2, 2], [2, 0, 0]], np.uint8)
    save_mask(tmp_path / "rgb.png", labels, "rgb")  # class 0 is black
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "rgb.png", binary=True), [[0, 1, 1], [1, 0, 0]])
    palette = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 255, 255, 0, 0, 0] + [9] * 759)  # index 2 is black too
    palette.save(tmp_path / "p.png")
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "p.png", binary=True), [[0, 1], [0, 0]])


def test_void_option(tmp_path):
    rng = np.random.default_rng(5)
    pairs, expected = {}, {}
    for i in range(4):
        image, labels = example(rng, 4)
        labels = np.where(labels == 255, 0, labels + 1).astype(np.uint8)  # the user's void is 0, classes 1..4
        pairs[f"v{i}"] = (image, labels)
        expected[f"v{i}"] = (image, np.where(labels == 0, 255, labels).astype(np.uint8))
    write_pairs(tmp_path / "images", tmp_path / "masks", pairs, "gray")
    ds = folder.FolderDataset(tmp_path, void=0, progress=False)
    assert ds.num_classes == 5 and ds.void == 0  # class_0 has no pixels: its value is the void
    assert_examples(ds.source("train"), expected)
    assert ds.pixel_counts["train"][0] == 0 and "void value 0 -> 255" in ds.describe()
    save_mask(tmp_path / "masks" / "v0.png", np.where(pairs["v0"][1] == 4, 255, pairs["v0"][1]), "gray")
    one_line_error(lambda: folder.FolderDataset(tmp_path, void=0, progress=False), str(tmp_path / "masks" / "v0.png"),
                   "mask value 255", "void value is 0")
    one_line_error(lambda: folder.FolderDataset(tmp_path, void=-1, progress=False), "void value")


def test_sixteen_bit_void_and_wide_values(tmp_path):
    labels = np.array([[0, 1, 65535], [2, 1, 0]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "m.png")
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "m.png", void=65535), [[0, 1, 255], [2, 1, 0]])
    one_line_error(lambda: folder.read_mask(tmp_path / "m.png"), str(tmp_path / "m.png"),
                   "mask value 65535 at pixel (x=2, y=0)")


def test_class_discovery_and_classes_txt_limits(tmp_path):
    pairs = write_flat(tmp_path, 4, encoding="palette", num_classes=5)
    ds = folder.FolderDataset(tmp_path, progress=False)
    assert ds.class_names == tuple(f"class_{i}" for i in range(5))
    write_classes(tmp_path, ["a", "b", "c", "d", "e", "f"])  # more classes than present: fine
    assert folder.FolderDataset(tmp_path, progress=False).class_names == ("a", "b", "c", "d", "e", "f")
    write_classes(tmp_path, ["a", "b", "c", "d"])
    first = sorted(pairs)[0]
    labels = pairs[first][1]
    y, x = np.argwhere(labels == 4)[0]
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / f"{first}.png"),
                   f"mask value 4 at pixel (x={x}, y={y})", "lists 4 classes")


def test_pixel_counts_match_numpy(tmp_path):
    pairs = write_flat(tmp_path, 12, num_classes=4)
    ds = folder.FolderDataset(tmp_path, progress=False)
    for split in ("train", "val"):
        labels = np.concatenate([pairs[s][1].ravel() for s in ds.stems[split]])
        expected = np.array([(labels == c).sum() for c in range(4)], np.int64)
        assert ds.pixel_counts[split].dtype == np.int64
        np.testing.assert_array_equal(ds.pixel_counts[split], expected)
        assert ds.void_pixels[split] == (labels == 255).sum()
        np.testing.assert_array_equal(data.class_pixel_counts(f"folder:{tmp_path}", split, progress=False), expected)
    assert np.asarray(ds.sizes["train"]).tolist() == [list(pairs[s][1].shape) for s in ds.stems["train"]]
    np.testing.assert_array_equal(ds.source("val").sizes(), ds.sizes["val"])


def test_read_mask_modes(tmp_path):
    bits = np.array([[0, 1], [1, 0]], bool)
    Image.fromarray(bits).save(tmp_path / "one_bit.png")
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "one_bit.png"), bits.astype(np.uint8))
    gray_alpha = Image.fromarray(np.dstack([np.array([[3, 255]], np.uint8), np.array([[0, 255]], np.uint8)]), "LA")
    gray_alpha.save(tmp_path / "la.png")
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "la.png"), [[3, 255]])
    for ext in (".bmp", ".tif", ".gif"):
        save_mask(tmp_path / f"p{ext}", np.array([[0, 7], [255, 2]], np.uint8))
        np.testing.assert_array_equal(folder.read_mask(tmp_path / f"p{ext}"), [[0, 7], [255, 2]])
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "p.tif", colours=COLOURS), [[0, 7], [255, 2]])
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    one_line_error(lambda: folder.read_mask(tmp_path / "f.tif"), str(tmp_path / "f.tif"), "mode F")


# ------------------------------------------------------------------------------------------------
# Validation errors.

def test_root_errors(tmp_path):
    one_line_error(lambda: folder.FolderDataset(tmp_path / "nope", progress=False), str(tmp_path / "nope"),
                   "does not exist")
    (tmp_path / "file").write_text("x")
    one_line_error(lambda: folder.FolderDataset(tmp_path / "file", progress=False), str(tmp_path / "file"),
                   "must be a directory")
    os.makedirs(tmp_path / "d" / "masks")
    one_line_error(lambda: folder.FolderDataset(tmp_path / "d", progress=False), str(tmp_path / "d" / "images"),
                   "no such directory")
    os.makedirs(tmp_path / "e" / "images")
    one_line_error(lambda: folder.FolderDataset(tmp_path / "e", progress=False), str(tmp_path / "e" / "masks"),
                   "no such directory")
    one_line_error(lambda: data.dataset_meta("folder:"), "names no directory")


def test_unpaired_files(tmp_path):
    write_flat(tmp_path, 9)
    for i in range(7):
        os.remove(tmp_path / "masks" / f"img_{i:03d}.png")
    message = one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), "7 image(s)",
                             str(tmp_path / "images"), "img_000.png", "img_004.png, ...")
    assert "img_005.png" not in message
    write_flat(tmp_path / "b", 3)
    save_mask(tmp_path / "b" / "masks" / "orphan.png", np.zeros((4, 4), np.uint8))
    one_line_error(lambda: folder.FolderDataset(tmp_path / "b", progress=False), "1 mask(s)",
                   str(tmp_path / "b" / "masks"), "orphan.png")


def test_two_images_with_one_stem(tmp_path):
    pairs = write_flat(tmp_path, 3)
    Image.fromarray(pairs["img_001"][0]).save(tmp_path / "images" / "img_001.jpg")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images"),
                   "'img_001'", "img_001.jpg", "img_001.png")


def test_size_mismatch(tmp_path):
    write_flat(tmp_path, 3)
    save_mask(tmp_path / "masks" / "img_002.png", np.zeros((5, 6), np.uint8))
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / "img_002.png"),
                   "mask is 6x5", str(tmp_path / "images" / "img_002.png"))


def test_unreadable_files(tmp_path):
    write_flat(tmp_path, 3)
    (tmp_path / "images" / "img_001.png").write_bytes(b"not a png at all")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "images" / "img_001.png"),
                   "cannot read image (")
    write_flat(tmp_path / "b", 3)
    (tmp_path / "b" / "masks" / "img_002.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    one_line_error(lambda: folder.FolderDataset(tmp_path / "b", progress=False),
                   str(tmp_path / "b" / "masks" / "img_002.png"), "cannot read mask (")


def test_jpeg_masks_are_refused(tmp_path):
    write_flat(tmp_path, 3)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "extra.jpg")
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / "extra.jpg"),
                   "lossless")


@pytest.mark.parametrize("lines, line, fragment", [
    (["a", "b 1 2"], 2, "malformed line 'b 1 2'"),
    (["a 1 2 3", "b 1 2 300"], 2, "out of range"),
    (["a 1 2 3", "b"], 2, "either every class has"),
    (["a", "a"], 2, "listed twice"),
    (["a 1 2 3", "b 1 2 3"], 2, "also the colour of 'a'"),
    (["a 1 2 3", "void 9 9 9", "b 4 5 6"], 2, "must be the last line"),
    (["a", "void"], 2, "`void` without a colour"),
])
def test_malformed_classes_txt(tmp_path, lines, line, fragment):
    write_flat(tmp_path, 2)
    path = write_classes(tmp_path, ["# header"] + lines)
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), f"{path}:{line + 1}", fragment)


def test_decoding_errors_name_the_file(tmp_path):
    write_flat(tmp_path, 3)
    source = folder.FolderDataset(tmp_path, progress=False).source("train")
    broken = source.images[0]
    with open(broken, "wb") as f:
        f.write(b"garbage")
    one_line_error(lambda: source[0], broken, "cannot read image")
    with pytest.raises(IndexError):
        source[len(source)]
    assert source[-1]["file_name"] == source.stems[-1]


# ------------------------------------------------------------------------------------------------
# EXIF orientation.

def test_exif_rotated_jpeg(tmp_path):
    upright = np.zeros((20, 32, 3), np.uint8)  # smooth, so JPEG keeps it close
    upright[..., 0] = np.linspace(0, 255, 32)[None, :]
    upright[..., 1] = np.linspace(0, 255, 20)[:, None]
    stored = np.rot90(upright, k=1)  # orientation 6: displayed after a 90 degree clockwise turn
    exif = Image.Exif()
    exif[0x0112] = 6
    rng = np.random.default_rng(6)
    write_flat(tmp_path, 2)
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "images" / "rot.jpg", quality=95,
                                                       exif=exif.tobytes())
    labels = rng.integers(0, 3, (20, 32)).astype(np.uint8)
    save_mask(tmp_path / "masks" / "rot.png", labels)
    (tmp_path / "train.txt").write_text("rot\nimg_000\n")
    (tmp_path / "val.txt").write_text("img_001\n")
    assert folder.image_size(tmp_path / "images" / "rot.jpg") == (32, 20)
    ds = folder.FolderDataset(tmp_path, progress=False)
    ex = ds.source("train")[0]
    assert ex["file_name"] == "rot" and ex["image"].shape == (20, 32, 3)
    assert np.abs(ex["image"].astype(int) - upright).max() < 12
    np.testing.assert_array_equal(ex["segmentation"], labels)
    save_mask(tmp_path / "masks" / "rot.png", labels.T.copy())  # the stored (unrotated) size
    one_line_error(lambda: folder.FolderDataset(tmp_path, progress=False), str(tmp_path / "masks" / "rot.png"),
                   "mask is 20x32", "is 32x20 (after EXIF orientation)")


# ------------------------------------------------------------------------------------------------
# Caching, change detection, integration.

def test_changes_are_picked_up(tmp_path):
    name = f"folder:{tmp_path}"
    pairs = write_flat(tmp_path, 10, num_classes=3)
    first = data.prepare(name)
    assert data.prepare(name) is first  # unchanged: the cached scan
    assert data.dataset_meta(name).splits == {"train": 9, "val": 1}
    rng = np.random.default_rng(7)
    pairs["new"] = example(rng, 3)
    write_pairs(tmp_path / "images", tmp_path / "masks", {"new": pairs["new"]})
    assert data.dataset_meta(name).splits == {"train": 10, "val": 1}
    assert data.prepare(name) is not first
    os.remove(tmp_path / "images" / "img_000.png")
    os.remove(tmp_path / "masks" / "img_000.png")
    del pairs["img_000"]
    both = [data.load_split(name, s) for s in ("train", "val")]
    assert sorted(sum((list(s.stems) for s in both), [])) == sorted(pairs)
    # Modify a mask (same stem): the pixel counts and the examples follow.
    stem = both[0].stems[0]
    changed = np.where(pairs[stem][1] == 255, 255, 2).astype(np.uint8)
    save_mask(tmp_path / "masks" / f"{stem}.png", changed)
    stat = os.stat(tmp_path / "masks" / f"{stem}.png")
    os.utime(tmp_path / "masks" / f"{stem}.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    source = data.load_split(name, "train")
    np.testing.assert_array_equal(source[list(source.stems).index(stem)]["segmentation"], changed)
    expected = np.concatenate([(changed if s == stem else pairs[s][1]).ravel() for s in source.stems])
    np.testing.assert_array_equal(data.class_pixel_counts(name, "train", progress=False),
                                  [(expected == c).sum() for c in range(3)])
    write_classes(tmp_path, ["bg", "one", "two", "three"])  # classes.txt is part of the fingerprint
    assert data.dataset_meta(name).class_names == ("bg", "one", "two", "three")


def test_data_api_integration(tmp_path, monkeypatch):
    pairs = write_flat(tmp_path / "mine", 10, num_classes=3)
    write_classes(tmp_path / "mine", ["background", "cat", "dog"])
    monkeypatch.chdir(tmp_path)
    meta = data.dataset_meta("folder:mine")  # relative to the working directory
    assert meta.name == f"folder:{tmp_path / 'mine'}"
    assert (meta.num_classes, meta.class_names) == (3, ("background", "cat", "dog"))
    assert dict(meta.splits) == {"train": 9, "val": 1} and (meta.train_split, meta.eval_split) == ("train", "val")
    assert meta.colours is None and "random 90/10 split" in meta.description
    source = data.load_split("folder:mine", meta.train_split, data_dir="ignored", manual_dir=None)
    assert isinstance(source, folder.FolderSource) and len(source) == 9
    assert_examples(source, pairs)
    clone = pickle.loads(pickle.dumps(source))
    assert len(pickle.dumps(source)) < 4000
    np.testing.assert_array_equal(clone[3]["segmentation"], source[3]["segmentation"])
    summary = data.dataset_summary("folder:mine")
    assert json.loads(json.dumps(summary)) == summary
    assert summary["class_names"] == ["background", "cat", "dog"] and summary["void"] == 255
    assert sorted(summary["stems"]["train"] + summary["stems"]["val"]) == sorted(pairs)
    assert summary["split_method"] == meta.description.splitlines()[-1].split("(", 1)[1][:-1]
    one_line_error(lambda: data.load_split("folder:mine", "validation"), "no split 'validation'", "'val'")
    one_line_error(lambda: data.get_builder("folder:mine"), "use load_split")
    one_line_error(lambda: data.load_split("folder:mine", "train", config="x"), "no builder options")
    for kwargs in ({"binary": True}, {"void": 0}):
        one_line_error(lambda: data.dataset_meta("shapes", **kwargs),
                       "--binary-masks / --void-value apply to folder: datasets only")
        one_line_error(lambda: data.load_split("shapes", "train", data_dir=tmp_path / "tfds", **kwargs),
                       "--binary-masks / --void-value apply to folder: datasets only")
    assert not (tmp_path / "tfds").exists()


def test_scan_progress_bar(tmp_path, monkeypatch, capsys):
    write_flat(tmp_path, 4)
    monkeypatch.setattr(folder, "_PROGRESS_MIN_FILES", 2)
    folder.FolderDataset(tmp_path, progress=False)
    assert "checking" not in capsys.readouterr().err
    folder.FolderDataset(tmp_path)
    assert f"checking {tmp_path}: " in capsys.readouterr().err


def test_images_are_decoded_once_per_path_size_and_mtime(tmp_path, monkeypatch):
    """The scan decodes every image in full (a truncated one passes a header read); a file decoded before
    with the same size and mtime is not decoded again, whatever process asks (the record is on disk)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "data"
    pairs = write_flat(root, 6)
    decoded = []
    real = folder.load_image
    monkeypatch.setattr(folder, "load_image", lambda path: decoded.append(os.path.basename(path)) or real(path))
    folder.FolderDataset(root, progress=False)
    assert sorted(decoded) == sorted(f"{s}.png" for s in pairs)
    records = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "cache") for f in fs]
    assert len(records) == 1 and records[0].startswith(str(tmp_path / "cache" / "fcn_jax" / "folders"))
    assert sorted(os.listdir(root)) == ["images", "masks"]  # nothing written into the dataset
    decoded.clear()
    folder.FolderDataset(root, progress=False)
    assert decoded == []
    os.utime(root / "images" / "img_002.png", ns=(0, 10**18))  # touched: decoded again
    folder.FolderDataset(root, progress=False)
    assert decoded == ["img_002.png"]
    decoded.clear()
    path = root / "images" / "img_004.png"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    one_line_error(lambda: folder.FolderDataset(root, progress=False), f"{path}: cannot read image (image file is "
                   "truncated)")
    path.write_bytes(content)  # repaired: only it is decoded (the others' checks were kept)
    decoded.clear()
    ds = folder.FolderDataset(root, progress=False)
    assert decoded == ["img_004.png"]
    assert_examples(ds.source("train"), pairs)
    np.testing.assert_array_equal(ds.sizes["train"], [pairs[s][1].shape for s in ds.stems["train"]])


def test_the_user_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert folder.cache_dir() == str(tmp_path / "xdg" / "fcn_jax")
    for unset in (None, "", "relative/path"):  # the XDG spec: a relative path is ignored
        if unset is None:
            monkeypatch.delenv("XDG_CACHE_HOME")
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", unset)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert folder.cache_dir() == str(tmp_path / "home" / ".cache" / "fcn_jax")
    # an unwritable cache only costs the decoding again
    (tmp_path / "ro").write_text("a file, not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    pairs = write_flat(tmp_path / "data", 3)
    assert_examples(folder.FolderDataset(tmp_path / "data", progress=False).source("train"), pairs)


def test_binary_masks_of_more_than_two_values_are_refused(tmp_path):
    """--binary-masks on class masks would merge their classes: a binary mask holds 0 and one other value."""
    labels = np.array([[0, 1, 2], [0, 1, 1]], np.uint8)
    save_mask(tmp_path / "gray.png", labels, "gray")
    one_line_error(lambda: folder.read_mask(tmp_path / "gray.png", binary=True),
                   f"{tmp_path / 'gray.png'}: mask holds 3 values (0, 1, 2)", "--binary-masks")
    save_mask(tmp_path / "rgb.png", labels, "rgb")  # colour and palette masks: by colour
    one_line_error(lambda: folder.read_mask(tmp_path / "rgb.png", binary=True), str(tmp_path / "rgb.png"),
                   f"mask holds 3 colours ({', '.join(map(str, sorted(COLOURS[:3])))})", "--binary-masks")
    save_mask(tmp_path / "p.png", labels, "palette")  # listed in RGB order
    colours = ", ".join(str(c) for c in sorted(tuple(PALETTE[3 * i: 3 * i + 3]) for i in range(3)))
    one_line_error(lambda: folder.read_mask(tmp_path / "p.png", binary=True), f"mask holds 3 colours ({colours})")
    for values in ([0, 255], [0, 1], [7, 7], [0, 0]):  # one non-zero value (or none): binary
        mask = np.array([[values[0], values[1]], [values[1], values[0]]], np.uint8)
        save_mask(tmp_path / "ok.png", mask, "gray")
        np.testing.assert_array_equal(folder.read_mask(tmp_path / "ok.png", binary=True), mask != 0)
    soft = np.zeros((8, 8), np.uint8)  # a soft-edged 0/255 foreground: anti-aliased values between
    soft[2:6, 2:6], soft[1, 2:6], soft[6, 2:6], soft[2:6, 1] = 255, 128, 64, 3
    save_mask(tmp_path / "soft.png", soft, "gray")
    np.testing.assert_array_equal(folder.read_mask(tmp_path / "soft.png", binary=True), soft != 0)
    save_mask(tmp_path / "void.png", np.array([[0, 1], [255, 1]], np.uint8), "gray")  # class 1 and void 255
    one_line_error(lambda: folder.read_mask(tmp_path / "void.png", binary=True), "mask holds 3 values (0, 1, 255)")
    write_flat(tmp_path / "d", 4, num_classes=3, encoding="gray")
    one_line_error(lambda: folder.FolderDataset(tmp_path / "d", binary=True, progress=False),
                   "mask holds 4 values (0, 1, 2, 255)")  # 255 is not void in binary masks


def test_tfds_summary_and_pixel_counts(tmp_path):
    config = data.ShapesConfig(name="folder_test", num_train=3, num_validation=2, min_size=16, max_size=20)
    summary = data.dataset_summary("shapes", tmp_path, config=config)
    assert summary["splits"] == {"train": 3, "validation": 2} and summary["num_classes"] == 7
    counts = data.class_pixel_counts("shapes", "validation", tmp_path, config=config, progress=False)
    from fcn_jax.data.shapes import generate_example
    labels = np.concatenate([generate_example(config, "validation", i)["segmentation"].ravel() for i in range(2)])
    np.testing.assert_array_equal(counts, [(labels == c).sum() for c in range(7)])
    assert counts.dtype == np.int64
