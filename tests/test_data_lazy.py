"""``fcn_jax.data`` imports TensorFlow Datasets lazily: the package, the tools' libraries and everything on
folder datasets run without ``tensorflow_datasets`` (or TensorFlow) in ``sys.modules``; tfds and the builder
modules (which register the tfds builders) come in on first use of a tfds dataset name or of a name defined
in them. Each check runs in a fresh interpreter (this test process may have imported tfds already).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import fcn_jax.data

CLASSES = ("background", "cat", "dog")
BUILDER_MODULES = ("fcn_jax.data.common", "fcn_jax.data.nyud", "fcn_jax.data.pascal_context",
                   "fcn_jax.data.shapes", "fcn_jax.data.sift_flow", "fcn_jax.data.voc")


def run_python(code: str, *args: str) -> dict:
    """Runs ``code`` in a fresh interpreter; it prints one JSON object as its last stdout line."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


@pytest.fixture
def folder_dir(tmp_path):
    """A flat folder dataset (fcn_jax/data/folder.py's layout): 4 PNG images and palette masks, classes.txt,
    train.txt / val.txt. Returns (root, {stem: (image, labels)})."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    written = {}
    for i in range(4):
        stem = f"img{i}"
        image = rng.integers(0, 256, (12 + i, 16, 3), dtype=np.uint8)
        labels = rng.integers(0, len(CLASSES), image.shape[:2]).astype(np.uint8)
        labels[0, : len(CLASSES)] = np.arange(len(CLASSES))
        labels[-1, :3] = 255  # void
        Image.fromarray(image).save(root / "images" / f"{stem}.png")
        mask = Image.fromarray(labels, "P")
        mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] * 85 + [0, 0, 0])
        mask.save(root / "masks" / f"{stem}.png")
        written[stem] = (image, labels)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (root / "train.txt").write_text("img0\nimg1\nimg2\n")
    (root / "val.txt").write_text("img3\n")
    return root, written


def test_folder_datasets_never_import_tfds(folder_dir):
    root, written = folder_dir
    result = run_python(f"""
        import json, sys
        import numpy as np
        import fcn_jax, fcn_jax.data, fcn_jax.loading, fcn_jax.inference, fcn_jax.train_lib
        import fcn_jax.data.base, fcn_jax.data.folder, fcn_jax.data.to_folder
        from fcn_jax import data
        from fcn_jax.data import (DataError, EVAL_SPLIT, GEOMETRIC_CLASSES, TRAIN_SPLIT, VOC_CLASSES, VOID,
                                  FolderDataset, FolderSource, folder, folder_root, is_folder, load_folder, read_mask)

        root = sys.argv[1]
        name = "folder:" + root
        data.disable_progress_bars()  # --no-progress: deferred until tfds is imported, if ever
        meta = data.dataset_meta(name)
        example = data.load_split(name, "train")[0]
        val = data.load_split(name, "val", progress=False)
        counts = data.class_pixel_counts(name, "train")
        summary = data.dataset_summary(name)
        scanned = folder.load_folder(root)
        classes = folder.read_classes(root + "/classes.txt")
        mask = read_mask(root + "/masks/img3.png")
        try:
            data.get_builder(name)
        except DataError as e:
            folder_builder_error = str(e)
        print(json.dumps({{
            "meta": [meta.name, meta.num_classes, list(meta.class_names), dict(meta.splits), meta.train_split,
                     meta.eval_split],
            "file_name": example["file_name"], "image": example["image"].tolist(),
            "segmentation": example["segmentation"].tolist(), "val": [len(val), val[0]["file_name"]],
            "counts": counts.tolist(), "summary_classes": summary["class_names"],
            "scanned": [scanned.num_classes, dict(scanned.splits)], "classes": list(classes.names),
            "mask": mask.tolist(), "error": folder_builder_error, "splits": [TRAIN_SPLIT, EVAL_SPLIT],
            "modules": sorted(m for m in ("tensorflow_datasets", "tensorflow", *{BUILDER_MODULES!r})
                              if m in sys.modules),
        }}))
        """, str(root))
    assert result["modules"] == [], result["modules"]
    assert result["meta"] == [f"folder:{root}", 3, list(CLASSES), {"train": 3, "val": 1}, "train", "val"]
    image, labels = written[result["file_name"]]
    assert result["file_name"] in ("img0", "img1", "img2")
    np.testing.assert_array_equal(np.array(result["image"], np.uint8), image)
    np.testing.assert_array_equal(np.array(result["segmentation"], np.uint8), labels)
    assert result["val"] == [1, "img3"]
    expected = sum(np.bincount(written[s][1][written[s][1] != 255], minlength=3) for s in ("img0", "img1", "img2"))
    assert result["counts"] == expected.tolist()
    assert result["summary_classes"] == list(CLASSES) and result["classes"] == list(CLASSES)
    assert result["scanned"] == [3, {"train": 3, "val": 1}]
    np.testing.assert_array_equal(np.array(result["mask"], np.uint8), written["img3"][1])
    assert "folder datasets are read directly" in result["error"]
    assert result["splits"] == ["train", "validation"]


def test_tfds_datasets_import_tfds_and_register_the_builders_on_first_use(tmp_path):
    result = run_python("""
        import json, sys
        import fcn_jax.data as data

        before = sorted(m for m in ("tensorflow_datasets",) if m in sys.modules)
        data.disable_progress_bars()  # before tfds is imported: applies once it is
        builder = data.prepare("shapes/tiny", sys.argv[1])
        source = data.load_split("shapes/tiny", "train", sys.argv[1])
        meta = data.dataset_meta("shapes/tiny", sys.argv[1])
        example = source[0]
        from fcn_jax.data import SHAPES_CLASSES, VocSegmentation
        import fcn_jax.data.voc
        import tensorflow_datasets as tfds
        registered = [tfds.builder_cls(n).__module__ for n in
                      ("shapes", "voc_segmentation", "pascal_context", "sift_flow", "nyud")]
        print(json.dumps({
            "before": before, "after": "tensorflow_datasets" in sys.modules, "registered": registered,
            "builder": type(builder).__name__, "prepared": builder.is_prepared(), "len": len(source),
            "keys": sorted(example), "shape": list(example["image"].shape), "meta": [meta.name, dict(meta.splits)],
            "classes": list(SHAPES_CLASSES), "same": VocSegmentation is fcn_jax.data.voc.VocSegmentation,
        }))
        """, str(tmp_path / "tfds"))
    assert result["before"] == [] and result["after"]
    assert result["registered"] == ["fcn_jax.data.shapes", "fcn_jax.data.voc", "fcn_jax.data.pascal_context",
                                    "fcn_jax.data.sift_flow", "fcn_jax.data.nyud"]
    assert result["builder"] == "Shapes" and result["prepared"] and result["len"] == 48
    assert result["keys"] == ["file_name", "image", "segmentation"] and result["shape"][2] == 3
    assert result["meta"] == ["shapes/tiny", {"train": 48, "validation": 16}]
    assert result["classes"] == list(fcn_jax.data.shapes.SHAPES_CLASSES) and result["same"]
    assert "examples/s" not in result["stderr"], result["stderr"]  # tfds's progress bars stayed off


def test_lazy_public_names():
    """Every public name resolves (the builder modules' through the module __getattr__) to the object
    defined in its module; unknown names are AttributeErrors; the lazy names are in dir()."""
    from fcn_jax.data import (CONTEXT59_CLASSES, NYUD_CLASSES, SHAPES_CLASSES, SIFT_FLOW_CLASSES, Nyud,
                              PascalContext, SegmentationBuilder, Shapes, ShapesConfig, SiftFlow, VocSegmentation,
                              VocSegmentationConfig, common, nyud, pascal_context, shapes, sift_flow, voc)
    assert (CONTEXT59_CLASSES, PascalContext) == (pascal_context.CONTEXT59_CLASSES, pascal_context.PascalContext)
    assert (NYUD_CLASSES, Nyud) == (nyud.NYUD_CLASSES, nyud.Nyud)
    assert (SHAPES_CLASSES, Shapes, ShapesConfig) == (shapes.SHAPES_CLASSES, shapes.Shapes, shapes.ShapesConfig)
    assert (SIFT_FLOW_CLASSES, SiftFlow) == (sift_flow.SIFT_FLOW_CLASSES, sift_flow.SiftFlow)
    assert (VocSegmentation, VocSegmentationConfig) == (voc.VocSegmentation, voc.VocSegmentationConfig)
    assert SegmentationBuilder is common.SegmentationBuilder and issubclass(Shapes, SegmentationBuilder)
    assert fcn_jax.data.DataError is common.DataError and fcn_jax.data.VOC_CLASSES == voc.VOC_CLASSES
    assert fcn_jax.data.GEOMETRIC_CLASSES == sift_flow.GEOMETRIC_CLASSES
    assert (common.TRAIN_SPLIT, common.EVAL_SPLIT) == (fcn_jax.data.TRAIN_SPLIT, fcn_jax.data.EVAL_SPLIT)
    for name in fcn_jax.data.__all__:
        assert getattr(fcn_jax.data, name) is not None, name
    assert set(fcn_jax.data.__all__) <= set(dir(fcn_jax.data))
    with pytest.raises(AttributeError, match="no_such_name"):
        fcn_jax.data.no_such_name
    with pytest.raises(fcn_jax.data.DataError, match="unknown dataset 'nope'.*shapes/tiny.*folder:DIR"):
        fcn_jax.data.get_builder("nope")
