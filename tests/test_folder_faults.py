"""Folder datasets that go wrong: a damaged image or mask is one line before anything is created; a file
damaged after the check is one line naming it when it is read, and the final validation it stopped runs on
resume; a folder changed between runs is reported, and each run's record of its dataset is kept.

Folders are written here with PIL (noise images, so a damaged PNG fails to decode); runs are the issue's
tiny fcn8s (width 1/8, 64 px crops, 4 steps) in process. The decode cache lives in the test's directory
(``XDG_CACHE_HOME``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest

from fcn_jax import checkpoint
from test_data_folder import example, save_mask, write_pairs

TINY = ["--variant", "fcn8s", "--width", "0.125", "--batch-size", "2", "--crop-size", "64", "--eval-every", "4",
        "--checkpoint-every", "2", "--no-progress"]
SIZE = (80, 80)


def write_folder(root, train: int = 6, val: int = 2, seed: int = 0, encoding: str = "gray") -> dict:
    """images/{train,val}/ + masks/{train,val}/ of noise images and 3-class masks; returns {split: pairs}."""
    rng = np.random.default_rng(seed)
    pairs = {"train": {f"t{i}": example(rng, 3, SIZE) for i in range(train)},
             "val": {f"v{i}": example(rng, 3, SIZE) for i in range(val)}}
    for split, split_pairs in pairs.items():
        write_pairs(os.path.join(root, "images", split), os.path.join(root, "masks", split), split_pairs, encoding)
    return pairs


def train(argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``train.py argv``, in process."""
    from fcn_jax.cli import train as train_cli
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def bump_mtime(path, seconds: int = 2) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def damage_in_place(path) -> bytes:
    """Zeroes the second half of a file, keeping its size and modification time (a disk error, not an
    edit); returns the original bytes."""
    original = open(path, "rb").read()
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(len(original) // 2)
        f.write(bytes(len(original) - len(original) // 2))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return original


@pytest.fixture(scope="module", autouse=True)
def decode_cache(tmp_path_factory):
    """The user cache (the folder decode check's) in the test's directory, for the module's fixtures too."""
    path = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(path))
        yield path


# ------------------------------------------------------------------------------------------------
# Found before anything is created.

@pytest.mark.parametrize("split, kind, extra", [("train", "images", []), ("val", "images", []),
                                                ("val", "masks", []), ("train", "images", ["--num-classes", "3"])])
def test_a_truncated_file_is_one_line_before_the_workdir_exists(tmp_path, split, kind, extra):
    root = tmp_path / "cells"
    write_folder(root)
    stem = "t3" if split == "train" else "v1"
    path = root / kind / split / f"{stem}.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    workdir = tmp_path / "run"
    code, out, err = train(TINY + ["--steps", "4", "--dataset", f"folder:{root}", "--workdir", str(workdir), *extra])
    assert code == 2, out[-2000:] + err
    assert err.count("\n") == 1 and err.startswith("train.py: error: "), err
    what = "image" if kind == "images" else "mask"
    assert f"{path}: cannot read {what} (image file is truncated)" in err, err
    assert not workdir.exists()


def test_binary_masks_on_class_masks_are_one_line(tmp_path):
    """--binary-masks on masks of classes 0, 1, 2 (and void 255) would merge them into class 1."""
    root = tmp_path / "cells"
    write_folder(root, train=3, val=1)
    code, out, err = train(TINY + ["--steps", "4", "--dataset", f"folder:{root}", "--binary-masks",
                                   "--workdir", str(tmp_path / "run")])
    assert code == 2 and err.count("\n") == 1, out[-2000:] + err
    first = sorted(os.listdir(root / "masks" / "train"))[0]
    assert f"{root / 'masks' / 'train' / first}: mask holds 4 values (0, 1, 2, 255)" in err, err
    assert "without --binary-masks each is a class" in err
    assert not (tmp_path / "run").exists()


def test_an_empty_folder_path_is_one_line(tmp_path, monkeypatch):
    """``--dataset folder:`` names no directory (it used to mean the working directory, a dataset here)."""
    root = tmp_path / "cells"
    write_folder(root, train=3, val=1)
    monkeypatch.chdir(root)
    code, out, err = train(TINY + ["--steps", "4", "--dataset", "folder:", "--workdir", str(tmp_path / "run")])
    assert code == 2 and err.count("\n") == 1, out[-2000:] + err
    assert "names no directory" in err, err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# A run's story: trained to step 2; the folder changes and a val image is damaged in place; the resume
# reports the change, trains to 4 and fails at the final validation naming the file; repaired, the next run
# runs that validation; the one after has nothing to do.

@pytest.fixture(scope="module")
def story(tmp_path_factory):
    root = tmp_path_factory.mktemp("story")
    folder = root / "cells"
    pairs = write_folder(folder)
    workdir = root / "run"
    argv = TINY + ["--dataset", f"folder:{folder}", "--workdir", str(workdir)]
    runs = {"first": train(argv + ["--steps", "2"])}
    assert runs["first"][0] == 0, runs["first"][1][-3000:] + runs["first"][2]
    # the folder changes: 2 examples added, 1 removed, 1 mask edited
    rng = np.random.default_rng(9)
    added = {"t6": example(rng, 3, SIZE), "t7": example(rng, 3, SIZE)}
    write_pairs(folder / "images" / "train", folder / "masks" / "train", added, "gray")
    for kind in ("images", "masks"):
        os.remove(folder / kind / "train" / "t0.png")
    edited = folder / "masks" / "train" / "t1.png"
    save_mask(edited, np.where(pairs["train"]["t1"][1] == 255, 255, 2).astype(np.uint8), "gray")
    bump_mtime(edited)
    damaged = folder / "images" / "val" / "v1.png"
    original = damage_in_place(damaged)  # same size and mtime: the decode check of step 0 vouches for it
    runs["damaged"] = train(argv + ["--steps", "4"])
    steps_after_damage = checkpoint.saved_steps(str(workdir / "checkpoints"))
    damaged.write_bytes(original)
    bump_mtime(damaged)
    runs["repaired"] = train(argv + ["--steps", "4"])
    runs["again"] = train(argv + ["--steps", "4"])
    return {"folder": folder, "workdir": workdir, "runs": runs, "damaged": damaged,
            "steps_after_damage": steps_after_damage,
            "stems": {"first": sorted(pairs["train"]), "then": sorted(set(pairs["train"]) - {"t0"} | set(added))}}


def _metrics(workdir):
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_a_changed_folder_is_reported_on_resume_and_each_runs_record_is_kept(story):
    folder, workdir = story["folder"], story["workdir"]
    _, out, _ = story["runs"]["damaged"]
    assert (f"warning: dataset folder:{folder} changed since step 2: 2 added, 1 removed, 1 changed; "
            "dataset.json keeps the record of each run") in out, out[-3000:]
    assert "changed since" not in story["runs"]["first"][1]
    # 7 training examples now, 6 then: the saved data position cannot be reproduced; the run goes on
    assert (f"warning: the training split of folder:{folder} has 7 examples, 6 when the checkpoint was saved: "
            "training continues over the split as it is now") in out
    assert story["steps_after_damage"] == [2, 4]
    _, out, _ = story["runs"]["repaired"]
    assert f"warning: dataset folder:{folder} changed since step 4: 0 added, 0 removed, 1 changed" in out, out
    with open(workdir / "dataset.json") as f:
        record = json.load(f)
    runs = record["runs"]
    assert [r["start_step"] for r in runs] == [0, 2, 4]  # "again" trained nothing and recorded nothing
    assert sorted(runs[0]["dataset"]["stems"]["train"]) == story["stems"]["first"]
    assert sorted(runs[1]["dataset"]["stems"]["train"]) == story["stems"]["then"]
    assert runs[0]["dataset"]["stems"]["val"] == ["v0", "v1"] and runs[0]["dataset"]["name"] == f"folder:{folder}"
    assert runs[1]["changes"] == {"since_step": 2, "added": 2, "removed": 1, "changed": 1, "other_files": [],
                                  "moved": 0}
    assert runs[2]["changes"] == {"since_step": 4, "added": 0, "removed": 0, "changed": 1, "other_files": [],
                                  "moved": 0}
    # each run's files: one fingerprint per example (image and mask), keyed by the image's path
    tables = [record["files"][r["dataset"]["fingerprint"]["digest"]] for r in runs]
    assert sorted(tables[0]) == [f"images/train/{s}.png" for s in story["stems"]["first"]] + \
        ["images/val/v0.png", "images/val/v1.png"]
    assert sorted(tables[1]) == [f"images/train/{s}.png" for s in story["stems"]["then"]] + \
        ["images/val/v0.png", "images/val/v1.png"]
    assert tables[1]["images/val/v1.png"] == tables[0]["images/val/v1.png"] != tables[2]["images/val/v1.png"]
    assert tables[1]["images/train/t1.png"] != tables[0]["images/train/t1.png"]
    assert [r["dataset"]["fingerprint"]["examples"] for r in runs] == [8, 9, 9]


def test_a_file_damaged_after_the_check_is_one_line_and_the_final_validation_runs_on_resume(story):
    workdir, damaged = story["workdir"], story["damaged"]
    code, out, err = story["runs"]["damaged"]
    assert code == 2 and err.count("\n") == 1, out[-3000:] + err
    assert err.startswith(f"train.py: error: {damaged}: cannot read image ("), err
    assert story["steps_after_damage"] == [2, 4]  # trained to 4, then the validation of step 4 failed
    code, out, err = story["runs"]["repaired"]
    assert code == 0, out[-3000:] + err
    assert (f"{workdir} is trained to step 4 but its validation at step 4 did not complete (metrics.jsonl has "
            "no record of it): validating now") in out, out
    validations = {r["step"]: r["val/mean_iu"] for r in _metrics(workdir) if "val/mean_iu" in r}
    assert sorted(validations) == [2, 4]
    assert "step 4: validation pixel acc. " in out
    assert f"done: step 4, validation mean IU {100 * validations[4]:.2f}%; best model in {workdir}/best" in out
    _, meta = checkpoint.load_model(str(workdir), "best")
    best_step = max(validations, key=lambda s: (validations[s], -s))  # the first of equal scores stays best
    assert meta["step"] == best_step
    assert os.path.exists(workdir / "learning_curves.png")
    assert "step 4: validation" in open(workdir / "train.log").read()
    code, out, err = story["runs"]["again"]
    assert code == 0, out[-3000:] + err
    assert out.strip().splitlines()[-1] == (f"{workdir} is already trained to step 4 (--steps 4); last validation "
                                            f"(step 4): mean IU {100 * validations[4]:.2f}%; raise --steps to "
                                            "train longer")
