"""The model contract end to end with a network that is not a 2015 Caffe net: a tiny BatchNorm backbone, the
Caffe skip head and a training-only auxiliary head, registered from a test file (``tests/tiny_bn.py``).

It goes through every path: BatchNorm against torch.nn.BatchNorm2d; a train step whose statistics move and
are global over the batch (4 simulated devices give what 1 gives); train.py, SIGKILL and a bit-exact resume
including ``batch_stats``; eval.py (running statistics used, the auxiliary head not scored) against a NumPy
re-derivation; Inference with flip TTA and tiling against model.apply; load_model; ``--init`` into another
class count.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import fcn_jax
from fcn_jax import checkpoint, data, loading
from fcn_jax.config import ModelConfig
from fcn_jax.models.layers import BatchNorm

import tiny_bn

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "tiny_bn.py")
N = 7  # the shapes dataset's classes


@pytest.fixture(scope="module", autouse=True)
def registered():
    tiny_bn.register()
    yield
    fcn_jax.models.unregister_variant(tiny_bn.VARIANT)


def test_batchnorm_is_torchs_batchnorm2d():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    bn = BatchNorm()
    x0 = rng.standard_normal((3, 5, 4, 6)).astype(np.float32) * 3 + 1
    variables = bn.init(jax.random.PRNGKey(0), x0)
    variables = {"params": {"scale": jnp.asarray(rng.random(6) + 0.5, jnp.float32),
                            "bias": jnp.asarray(rng.standard_normal(6), jnp.float32)},
                 "batch_stats": variables["batch_stats"]}
    ref = torch.nn.BatchNorm2d(6)  # eps 1e-5, momentum 0.1
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(np.asarray(variables["params"]["scale"])))
        ref.bias.copy_(torch.from_numpy(np.asarray(variables["params"]["bias"])))
    ref.train()
    for step in range(2):
        x = x0 * (step + 1) - step
        y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(variables["batch_stats"]["mean"]), ref.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(variables["batch_stats"]["var"]), ref.running_var.numpy(), rtol=1e-6)
    ref.eval()
    y = bn.apply(variables, x0, train=False)
    want = ref(torch.from_numpy(x0.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5)
    frozen, updates = BatchNorm(frozen=True).apply(variables, x0, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(frozen), want, rtol=1e-5, atol=1e-5)  # running statistics, not updated
    jax.tree.map(np.testing.assert_array_equal, dict(updates["batch_stats"]), dict(variables["batch_stats"]))


def test_outputs_are_declared_and_the_aux_head_is_training_only():
    model = fcn_jax.create_model(tiny_bn.VARIANT, num_classes=N, padding="same")
    assert [(o.name, o.classes, o.loss_weight, o.evaluated) for o in model.outputs] == [
        ("out", N, 1.0, True), ("aux", N, tiny_bn.AUX_WEIGHT, False)]
    variables = fcn_jax.models.initial_variables(model, jax.random.PRNGKey(0))
    assert set(variables) == {"params", "batch_stats"}
    assert set(variables["params"]) == {"backbone", "score_fr", "score_pool1", "upscore2", "upscore4", "aux_classifier"}
    assert set(variables["batch_stats"]["backbone"]) == {"bn1", "bn2"} and "bn" in variables["batch_stats"]["aux_classifier"]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 13, 10, 3)), jnp.float32)
    logits = model.apply(variables, x)  # the README's API: a single scored output is its logits
    assert logits.shape == (2, 13, 10, N)
    out, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    assert set(out) == {"out", "aux"} and out["aux"].shape == (2, 13, 10, N)
    assert not np.allclose(np.asarray(updates["batch_stats"]["backbone"]["bn1"]["mean"]), 0)
    with pytest.raises(ValueError, match="supports padding same, not 'reference'"):
        fcn_jax.create_model(tiny_bn.VARIANT, num_classes=N, padding="reference").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="output heads"):
        fcn_jax.models.require("siftflow-fcn8s", single_output=True)
    fcn_jax.models.require(tiny_bn.VARIANT, rgb=True, single_output=True)  # aux is not scored: one output


DEVICES_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import tiny_bn
    tiny_bn.register()
    from fcn_jax import parallel
    from fcn_jax.config import ModelConfig
    from fcn_jax.configs import get_config
    from fcn_jax.train_lib import create_train_state, init_variables, make_train_step
    assert len(jax.devices()) == 4
    out, variables = {{}}, None
    for accum, n in ((1, 1), (1, 4), (2, 1), (2, 4)):
        cfg = get_config("modern", "fcn8s", model=dict(variant=tiny_bn.VARIANT, num_classes=3, padding="same",
                                                       dropout_rate=0.0, dtype="float32"), batch_size=4, lr=1e-2,
                         grad_accum=accum)
        model = cfg.model.build()
        variables = variables or jax.tree.map(np.asarray, init_variables(cfg, model))  # one start, on the host
        mesh = parallel.make_mesh(jax.devices()[:n])
        state = jax.device_put(create_train_state(cfg, model, variables), parallel.replicated(mesh))
        step = make_train_step(cfg, mesh)
        rng = np.random.default_rng(0)
        for i in range(2):
            b = {{"image": (rng.standard_normal((4, 12, 16, 3)) * 50 + 20 * np.arange(4)[:, None, None, None]
                           ).astype(np.float32), "label": rng.integers(0, 3, (4, 12, 16)).astype(np.int32)}}
            state, m = step(state, jax.device_put(b, parallel.data_sharding(mesh)))
        flat = lambda t: {{"/".join(str(getattr(k, "key", k)) for k in p): np.asarray(v).ravel().tolist()
                          for p, v in jax.tree_util.tree_leaves_with_path(t)}}
        out[f"{{accum}}x{{n}}"] = {{"stats": flat(state.model_state), "params": flat(state.params),
                                   "loss": float(m["loss"]), "aux": float(m["loss/aux"]), "main": float(m["loss/out"])}}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def device_runs():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", DEVICES_SCRIPT.format(tests=os.path.join(REPO, "tests"))],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("accum", [1, 2])
def test_batch_statistics_are_global_over_the_batch(device_runs, accum):
    """SyncBN semantics: under the sharded jit the batch statistics are the global batch's, so 4 devices
    give what 1 device gives (running statistics and parameters after two steps), and they move. With
    gradient accumulation the statistics are carried from micro-batch to micro-batch."""
    one, four = device_runs[f"{accum}x1"], device_runs[f"{accum}x4"]
    assert set(one["stats"]) == set(four["stats"]) and len(one["stats"]) == 6  # bn1, bn2, aux bn: mean, var
    for key in one["stats"]:
        np.testing.assert_allclose(four["stats"][key], one["stats"][key], rtol=2e-5, atol=1e-6, err_msg=key)
    mean = np.asarray(one["stats"]["batch_stats/backbone/bn1/mean"])
    assert np.abs(mean).max() > 1e-3  # moved from 0
    for key in one["params"]:
        np.testing.assert_allclose(four["params"][key], one["params"][key], rtol=1e-4, atol=1e-6, err_msg=key)
    # the loss is out + 0.5 aux
    np.testing.assert_allclose(one["loss"], one["main"] + one["aux"], rtol=1e-6)


# --------------------------------------------------------------------------------- the command lines

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract")
    data_dir = str(root / "tfds")
    data.prepare("shapes/tiny", data_dir)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    env.pop("XLA_FLAGS", None)
    return {"root": root, "data_dir": data_dir, "env": env}


def train_args(runs, workdir, steps):
    return [sys.executable, DRIVER, "train", "--variant", tiny_bn.VARIANT, "--num-classes", str(N),
            "--dataset", "shapes/tiny", "--data-dir", runs["data_dir"], "--workdir", str(workdir),
            "--width", "1", "--steps", str(steps), "--batch-size", "2", "--crop-size", "32", "--checkpoint-every", "2",
            "--log-every", "2", "--eval-every", str(steps), "--eval-batch-size", "4", "--lr", "0.01",
            "--no-progress"]


def run(args, env):
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def leaves(variables):
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(variables)).items()}


@pytest.fixture(scope="module")
def trained(runs):
    """An uninterrupted 6-step run, and one killed with SIGKILL after its step-2 checkpoint, then resumed."""
    straight = runs["root"] / "straight"
    out = run(train_args(runs, straight, 6), runs["env"])
    killed = runs["root"] / "killed"
    proc = subprocess.Popen(train_args(runs, killed, 6), env=runs["env"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.saved_steps(str(killed / "checkpoints")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    steps_before = checkpoint.saved_steps(str(killed / "checkpoints"))
    resumed = run(train_args(runs, killed, 6), runs["env"])
    return {"straight": straight, "killed": killed, "out": out, "resumed": resumed, "steps_before": steps_before}


def test_train_sigkill_resume_is_bit_exact_with_batch_stats(trained):
    assert trained["steps_before"] and max(trained["steps_before"]) < 6
    assert f"resuming from step {max(trained['steps_before'])}" in trained["resumed"]
    _, a, info = fcn_jax.load_model(str(trained["straight"]), step="latest")
    _, b, _ = fcn_jax.load_model(str(trained["killed"]), step="latest")
    assert info.step == 6 and set(a) == {"params", "batch_stats"}
    la, lb = leaves(a), leaves(b)
    assert set(la) == set(lb)
    for key in la:
        np.testing.assert_array_equal(la[key], lb[key], err_msg=key)
    fresh = leaves(fcn_jax.models.initial_variables(info.config.build(), jax.random.PRNGKey(0)))
    assert not np.allclose(la["batch_stats/backbone/bn1/mean"], fresh["batch_stats/backbone/bn1/mean"])
    # best/ holds every collection too, and its meta says so
    _, best, best_info = fcn_jax.load_model(str(trained["straight"]), step="best")
    assert set(best) == {"params", "batch_stats"} and best_info.meta["collections"] == ["batch_stats", "params"]
    assert best_info.meta["version"] == checkpoint.META_VERSION


def numpy_hist(labels, preds, n):
    k = (labels >= 0) & (labels < n)
    return np.bincount(n * labels[k].astype(int) + preds[k], minlength=n * n).reshape(n, n)


def test_eval_uses_running_statistics_and_scores_only_the_main_output(runs, trained, tmp_path):
    """eval.py on a folder dataset written here (3 images of 2 sizes): its mean IU equals score.py's formula
    over model.apply in inference mode (running statistics) at each image's own size; one scored output."""
    from PIL import Image
    rng = np.random.default_rng(7)
    root = tmp_path / "folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncircle\nsquare\ntriangle\nstar\nbar\nring\n")
    images, masks = {}, {}
    for stem, (h, w) in (("a", (20, 28)), ("b", (20, 28)), ("c", (24, 18))):
        images[stem] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        masks[stem] = rng.integers(0, N, (h, w)).astype(np.uint8)
        masks[stem][:2] = 255  # void
        Image.fromarray(images[stem]).save(root / "images" / f"{stem}.png")
        Image.fromarray(masks[stem], mode="L").save(root / "masks" / f"{stem}.png")
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("a\nb\nc\n")
    json_path = tmp_path / "eval.json"
    out = run([sys.executable, DRIVER, "eval", "--ckpt", str(trained["straight"]), "--dataset", f"folder:{root}",
               "--split", "val", "--json", str(json_path), "--no-progress", "--bucket-multiple", "exact"], runs["env"])
    record = json.loads(json_path.read_text())
    assert "heads" not in record and "aux" not in out and record["num_images"] == 3  # one scored output
    model, variables, info = fcn_jax.load_model(str(trained["straight"]))
    hist = np.zeros((N, N), np.int64)
    for stem in images:
        x = fcn_jax.preprocess(images[stem][None], info.preprocessing)
        preds = np.asarray(jnp.argmax(model.apply(variables, x), -1))[0]  # inference mode: running statistics
        hist += numpy_hist(masks[stem], preds, N)
    iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    np.testing.assert_allclose(record["mean_iu"], np.nanmean(iu), rtol=1e-9)
    np.testing.assert_allclose(record["pixel_acc"], np.diag(hist).sum() / hist.sum(), rtol=1e-9)


def test_predict_with_flip_and_tiles_equals_model_apply(trained):
    model, variables, info = fcn_jax.load_model(str(trained["straight"]))
    image = np.random.default_rng(3).integers(0, 256, (44, 64, 3), dtype=np.uint8)
    x = fcn_jax.preprocess(image[None], info.preprocessing)
    probs = jax.nn.softmax(model.apply(variables, x), -1) + jax.nn.softmax(
        model.apply(variables, x[:, :, ::-1])[:, :, ::-1], -1)
    label, p = fcn_jax.Inference.load(str(trained["straight"]), flip=True).predict(image, probabilities=True)
    np.testing.assert_allclose(p, np.asarray(probs[0]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(label, np.argmax(p, -1))
    # tiles of 32 (stride 21: windows at 0, 12 down and 0, 21, 32 across), scores averaged where they overlap
    tiled = fcn_jax.Inference.load(str(trained["straight"]), tile=32, max_side=0)
    total, count = np.zeros((44, 64, N)), np.zeros((44, 64, 1))
    for top in (0, 12):
        for left in (0, 21, 32):
            window = fcn_jax.preprocess(image[None, top:top + 32, left:left + 32], info.preprocessing)
            total[top:top + 32, left:left + 32] += np.asarray(model.apply(variables, window))[0]
            count[top:top + 32, left:left + 32] += 1
    np.testing.assert_allclose(tiled.scores(image), total / count, rtol=1e-5, atol=1e-5)


def test_init_transfers_backbone_and_statistics_into_another_class_count(trained):
    _, source, _ = fcn_jax.load_model(str(trained["straight"]), step="latest")
    target_cfg = ModelConfig(tiny_bn.VARIANT, 3, padding="same", dropout_rate=0.0)
    fresh = fcn_jax.models.initial_variables(target_cfg.build(), jax.random.PRNGKey(5))
    lines = []
    new, info = loading.init_variables(target_cfg, fresh, str(trained["straight"]), report=lines.append)
    assert info.step == 6
    ls, ln, lf = leaves(source), leaves(new), leaves(fresh)
    for key in ln:
        copied = key.split("/")[1] == "backbone" or key.startswith(  # the aux head but its class-sized score
            ("batch_stats/aux_classifier/", "params/aux_classifier/conv/", "params/aux_classifier/bn/"))
        np.testing.assert_array_equal(ln[key], ls[key] if copied else lf[key], err_msg=key)
    assert "copied" in lines[0] and "backbone (4 layers)" in lines[0]
    reinit = lines[0].split("re-initialised for test-bn-fcn with 3 classes: ")[1]
    assert "score_fr (zeros)" in reinit and "upscore2 (bilinear)" in reinit
    assert "aux_classifier/score (initialised)" in reinit and "aux_classifier (initialised)" not in reinit
    # big_vision's dont_load: a regular expression keeps matching arrays at their initialisation (and says so)
    lines = []
    new, _ = loading.init_variables(target_cfg, fresh, str(trained["straight"]), dont_load=("backbone/bn1/.*",),
                                    report=lines.append)
    assert "backbone (3 layers)" in lines[0]
    assert lines[0].split("re-initialised for test-bn-fcn with 3 classes: ")[1].startswith("backbone/bn1 (initialised), ")
    ln = leaves(new)
    np.testing.assert_array_equal(ln["batch_stats/backbone/bn1/mean"], lf["batch_stats/backbone/bn1/mean"])
    np.testing.assert_array_equal(ln["params/backbone/bn1/scale"], lf["params/backbone/bn1/scale"])
    np.testing.assert_array_equal(ln["batch_stats/backbone/bn2/mean"], ls["batch_stats/backbone/bn2/mean"])


def test_init_from_parameters_only_keeps_the_statistics_and_dont_load_reaches_training(trained):
    """A source without batch statistics (ImageNet-style weights: parameters only) starts a BatchNorm net:
    parameters copied, statistics left at their initialisation and reported as such; TrainConfig.dont_load
    (--dont-load) reaches --init."""
    from fcn_jax import train_lib
    from fcn_jax.configs import get_config
    _, source, _ = fcn_jax.load_model(str(trained["straight"]), step="latest")
    target_cfg = ModelConfig(tiny_bn.VARIANT, N, padding="same", dropout_rate=0.0)
    fresh = fcn_jax.models.initial_variables(target_cfg.build(), jax.random.PRNGKey(5))
    new, kept = loading.transfer(fresh, {"params": source["params"]})
    ln, lf, ls = leaves(new), leaves(fresh), leaves(source)
    np.testing.assert_array_equal(ln["params/backbone/conv1/kernel"], ls["params/backbone/conv1/kernel"])
    np.testing.assert_array_equal(ln["batch_stats/backbone/bn1/mean"], lf["batch_stats/backbone/bn1/mean"])
    assert "batch_stats/backbone/bn1/mean" in kept and "backbone/conv1/kernel" not in kept
    cfg = get_config("shapes", tiny_bn.VARIANT, model=dict(variant=tiny_bn.VARIANT, num_classes=N, width=1.0),
                     init=str(trained["straight"]), dont_load="backbone/bn1/.*")
    variables, _ = train_lib.initial_variables_for(cfg, cfg.model.build())
    lv, init = leaves(variables), leaves(train_lib.init_variables(cfg, cfg.model.build()))
    np.testing.assert_array_equal(lv["batch_stats/backbone/bn1/var"], init["batch_stats/backbone/bn1/var"])
    np.testing.assert_array_equal(lv["batch_stats/backbone/bn2/var"], ls["batch_stats/backbone/bn2/var"])
    with pytest.raises(ValueError, match="dont_load='\\(' is not a regular expression"):
        get_config("shapes", "fcn8s", dont_load="(")
