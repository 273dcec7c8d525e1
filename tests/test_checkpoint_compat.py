"""Checkpoints written before the model contract (full variables, typed meta) still load and resume.

``tests/fixtures/checkpoint_v0/workdir`` is a training workdir written on 2026-12-02 by the code of commit
45460bf (``train.py --variant fcn16s --width 0.015625 --steps 4 --batch-size 2 --crop-size 32
--eval-every 4 --checkpoint-every 2 --keep-checkpoints 2 --dataset shapes/tiny --eval-batch-size 4``; TensorBoard events and
the learning-curve picture removed). ``expected.npz`` holds what that code computed from it: the logits of
``fcn_jax.load_model`` at 'best' and 'latest' on a fixed image, and every leaf of the saved TrainState of
step 4 by path. Those files are never rewritten: they are the old format.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import fcn_jax
from fcn_jax import checkpoint, data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(REPO, "tests", "fixtures", "checkpoint_v0")
WORKDIR = os.path.join(FIXTURE, "workdir")


@pytest.fixture(scope="module")
def expected():
    with np.load(os.path.join(FIXTURE, "expected.npz")) as f:
        return dict(f)


@pytest.mark.parametrize("step", ["best", "latest"])
def test_old_checkpoint_loads_and_computes_what_it_did(expected, step):
    model, variables, info = fcn_jax.load_model(WORKDIR, step=step)
    assert info.step == 4 and info.config.variant == "fcn16s" and info.config.num_classes == 7
    assert info.class_names[:2] == ("background", "circle") and info.preprocessing == "torchvision"
    assert set(variables) >= {"params"}
    x = fcn_jax.preprocess(expected["image"], info.preprocessing)
    np.testing.assert_allclose(np.asarray(model.apply(variables, x)), expected[f"logits_{step}"],
                               rtol=1e-6, atol=1e-9)


def test_old_training_state_restores_leaf_by_leaf(expected):
    from fcn_jax import train_lib
    from fcn_jax.config import TrainConfig, from_dict
    with open(os.path.join(WORKDIR, "config.json")) as f:
        cfg = from_dict(TrainConfig, json.load(f))
    model = cfg.model.build()
    mesh = fcn_jax.parallel.make_mesh()
    target = train_lib.abstract_state(cfg, model, mesh)
    checkpoints = checkpoint.TrainCheckpointer(WORKDIR, keep=cfg.keep_checkpoints, read_only=True)
    try:
        state, meta, data_state = checkpoints.restore(target)
    finally:
        checkpoints.close()
    assert meta.step == 4 and meta.version == 0 and int(state.step) == 4 and data_state
    saved = {k[len("state/"):]: v for k, v in expected.items() if k.startswith("state/")}
    canonical = lambda key: re.sub(r"\.([A-Za-z_]\w*)", r"['\1']", key)  # noqa: E731  (attribute -> key)
    flat = {canonical(jax.tree_util.keystr(p)): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path({"params": state.params, "opt_state": state.opt_state,
                                                              "step": state.step})[0]}
    assert set(flat) == set(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(flat[key], value, err_msg=key)
    assert not jax.tree.leaves(getattr(state, "model_state", {}))  # no collections besides params then


def test_old_workdir_resumes_and_transfers(tmp_path):
    data_dir = str(tmp_path / "tfds")
    data.prepare("shapes/tiny", data_dir)
    workdir = tmp_path / "workdir"
    shutil.copytree(WORKDIR, workdir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    common = ["--dataset", "shapes/tiny", "--data-dir", data_dir, "--eval-batch-size", "4", "--no-progress"]
    res = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--variant", "fcn16s", "--width", "0.015625",
                          "--workdir", str(workdir), "--steps", "6", "--batch-size", "2", "--crop-size", "32",
                          "--eval-every", "6", "--checkpoint-every", "2", "--keep-checkpoints", "2", *common],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming from step 4" in res.stdout
    assert checkpoint.saved_steps(str(workdir / "checkpoints")) == [4, 6]
    _, _, info = fcn_jax.load_model(str(workdir), step="latest")
    assert info.step == 6
    # --init from the old workdir into the next stage (fcn16s -> fcn8s): backbone and shared heads copied
    from fcn_jax import loading
    from fcn_jax.config import ModelConfig
    target = ModelConfig("fcn8s", 7, width=0.015625, padding="same", dropout_rate=0.0)
    fresh = fcn_jax.models.initial_variables(target.build(), jax.random.PRNGKey(0))
    lines = []
    new, info = loading.init_variables(target, fresh, WORKDIR, report=lines.append)
    _, old, _ = fcn_jax.load_model(WORKDIR, step="latest")
    assert info.step == 4 and "backbone (15 layers)" in lines[0] and "score_pool3 (zeros)" in lines[0]
    for name in ("backbone", "score_fr", "score_pool4", "upscore2"):
        jax.tree.map(np.testing.assert_array_equal, new["params"][name], old["params"][name])
    jax.tree.map(np.testing.assert_array_equal, new["params"]["score_pool3"], fresh["params"]["score_pool3"])


def test_a_newer_meta_version_is_refused_not_set_aside(tmp_path):
    """A checkpoint that reads but was written by a newer fcn-jax is refused naming the version; it is not
    taken for a damaged one (which would be renamed to <step>.damaged, one step after the other)."""
    from fcn_jax import train_lib
    from fcn_jax.config import TrainConfig, from_dict
    workdir = tmp_path / "workdir"
    shutil.copytree(WORKDIR, workdir)
    for step in ("2", "4"):
        path = workdir / "checkpoints" / step / "meta" / "metadata"
        path.write_text(json.dumps(dict(json.loads(path.read_text()), version=checkpoint.META_VERSION + 1)))
    with open(os.path.join(WORKDIR, "config.json")) as f:
        cfg = from_dict(TrainConfig, json.load(f))
    checkpoints = checkpoint.TrainCheckpointer(str(workdir), keep=2)
    try:
        with pytest.raises(checkpoint.IncompatibleCheckpoint, match=f"meta version {checkpoint.META_VERSION + 1} is newer"):
            checkpoints.restore(train_lib.abstract_state(cfg, cfg.model.build(), fcn_jax.parallel.make_mesh()))
        with pytest.raises(checkpoint.IncompatibleCheckpoint, match=f"meta version {checkpoint.META_VERSION + 1} is newer"):
            checkpoints.meta(4)
    finally:
        checkpoints.close()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # nothing set aside
    with pytest.raises(fcn_jax.loading.LoadError, match=f"meta version {checkpoint.META_VERSION + 1} is newer"):
        fcn_jax.load_model(str(workdir), step="latest")
    with pytest.raises(ValueError, match="version are CheckpointMeta fields"):
        checkpoint.model_meta(cfg.model, ["c"] * 7, "caffe", source="x", **{"collections": ("params",),
                                                                           "version": 9, "step": 3})


def test_a_model_field_from_a_newer_fcn_jax_is_refused_not_set_aside(tmp_path):
    """A model config field this fcn-jax does not know (a newer one wrote it, under any version number) is
    refused as incompatible; earlier code renamed every step to <step>.damaged for it."""
    workdir = tmp_path / "workdir"
    shutil.copytree(WORKDIR, workdir)
    for step in ("2", "4"):
        path = workdir / "checkpoints" / step / "meta" / "metadata"
        record = json.loads(path.read_text())
        record["model"]["from_the_future"] = True
        path.write_text(json.dumps(record))
    checkpoints = checkpoint.TrainCheckpointer(str(workdir), keep=2)
    try:
        with pytest.raises(checkpoint.IncompatibleCheckpoint, match=r"fields this fcn-jax does not know \(from_the_future\)"):
            checkpoints.meta(4)
    finally:
        checkpoints.close()
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
