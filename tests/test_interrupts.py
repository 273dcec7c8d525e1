"""What the training loop says about an interruption is what is on disk (in-process, signals at controlled points)."""
from __future__ import annotations

import os
import re
import signal
import sys

import pytest

from fcn_jax import checkpoint, data, train_lib
from fcn_jax.configs import get_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    data.prepare("shapes/tiny", path)
    return path


def test_signal_during_the_metrics_fetch_is_saved_before_it_is_reported(data_dir, tmp_path, monkeypatch):
    """Ctrl-C arriving while the loop waits for step 3's metrics (not a checkpoint step): the run must
    save step 3, wait for it, and only then say "saved step 3"; earlier code said so with nothing saved."""
    cfg = get_config("shapes", "fcn32s", dataset="shapes/tiny", data_dir=data_dir, model={"width": 1 / 16},
                     steps=6, batch_size=2, crop_size=48, log_every=3, checkpoint_every=100, eval_every=100)
    real, fetches = train_lib._check_finite, []

    def fetch_with_signal(pending):
        fetches.append([step for step, _ in pending])
        if len(fetches) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # handled (stop requested) while the fetch is under way
        return real(pending)

    monkeypatch.setattr(train_lib, "_check_finite", fetch_with_signal)
    logs: list[str] = []
    workdir = str(tmp_path / "run")
    summary = train_lib.train_and_evaluate(cfg, workdir, progress=False, log=logs.append)
    assert summary["interrupted"] and fetches[0] == [1, 2, 3]
    said = [line for line in logs if "received signal" in line]
    assert len(said) == 1 and int(re.search(r"saved step (\d+)", said[0]).group(1)) == 3
    on_disk = sorted(int(d) for d in os.listdir(os.path.join(workdir, checkpoint.CHECKPOINTS)) if d.isdigit())
    assert on_disk == [3]
    _, meta = checkpoint.load_model(workdir, "latest")
    assert meta["step"] == 3


def test_a_non_finite_update_is_not_applied():
    """A learning rate so large that the updated parameters overflow: the step reports finite=False and
    leaves every parameter, the optimiser state and the step count as they were, so it cannot be saved."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from fcn_jax import parallel
    from fcn_jax.models import INIT_SHAPE

    cfg = get_config("reference", "fcn32s", model={"num_classes": 3, "width": 1 / 16, "dropout_rate": 0.0},
                     lr=3e38)
    model = cfg.model.build()
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros(INIT_SHAPE))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    state = train_lib.create_train_state(cfg, model, params)
    before = jax.device_get(state)
    image = jnp.asarray(50 * rng.standard_normal((1, 13, 11, 3)), jnp.float32)
    label = jnp.asarray(rng.integers(0, 3, (1, 13, 11)), jnp.int32)
    after, metrics = train_lib.make_train_step(cfg, parallel.make_mesh(jax.devices()[:1]))(
        state, {"image": image, "label": label})
    assert np.isfinite(float(metrics["loss"])) and not bool(metrics["finite"])
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.params), before.params)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(after.opt_state), before.opt_state)
    assert int(after.step) == 0
    with pytest.raises(train_lib.TrainingError, match="at step 1; stopping without applying it"):
        train_lib._check_finite([(1, metrics)])


_BEFORE_THE_LOOP = """
import os, signal, sys, time
# Ctrl-C's handler as in a terminal, also where pytest itself runs with SIGINT ignored (started by `nohup ... &`,
# whose children inherit SIG_IGN, which Python then leaves in place)
signal.signal(signal.SIGINT, signal.default_int_handler)
from fcn_jax.data import pipeline
real = pipeline.train_iterator

def iterator_then_signal(*args, **kwargs):  # the input threads are running, the loop has not started
    it = real(*args, **kwargs)
    next(it)
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(5)
    raise AssertionError("the signal did not interrupt")

pipeline.train_iterator = iterator_then_signal
from fcn_jax.cli.train import main
sys.exit(main(sys.argv[2:]))
"""
SIGNALS = ("SIGINT", "SIGTERM")


@pytest.fixture(scope="module", autouse=True)
def before_the_loop(request, early_runs, tmp_path_factory):
    """Starts the processes of ``test_signal_before_the_loop_...`` (one per signal, when that test is selected)
    with the module's first test: they wait for no other test. {signal name: workdir}."""
    if not early_runs.selected("test_signal_before_the_loop_is_one_line_and_the_signal_exit_code"):
        return {}
    data_dir = request.getfixturevalue("data_dir")
    workdirs = {}
    for sig in SIGNALS:
        workdirs[sig] = tmp_path_factory.mktemp(f"before_the_loop_{sig}") / "run"
        args = ["--variant", "fcn32s", "--dataset", "shapes/tiny", "--data-dir", data_dir, "--workdir",
                str(workdirs[sig]), "--width", "0.0625", "--steps", "3", "--batch-size", "2", "--crop-size", "48",
                "--no-progress"]
        early_runs.start(sig, [sys.executable, "-c", _BEFORE_THE_LOOP, sig, *args],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return workdirs


@pytest.mark.parametrize("sig", SIGNALS)
def test_signal_before_the_loop_is_one_line_and_the_signal_exit_code(before_the_loop, early_runs, sig):
    """Ctrl-C / SIGTERM while the input pipeline's threads run but before step 1: earlier code printed a
    KeyboardInterrupt traceback and crashed at exit (rc -11). Now: one line, exit 128 + signal, nothing saved."""
    code, _, stderr = early_runs.result(sig, 300)
    number = getattr(signal, sig)
    assert code == 128 + number, stderr[-3000:]
    assert "Traceback" not in stderr and "FATAL" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == (f"train.py: error: interrupted by {sig}; checkpoints already "
                                               f"on disk are kept; run again to resume")
    saved = before_the_loop[sig] / checkpoint.CHECKPOINTS
    assert not saved.exists() or not [d for d in os.listdir(saved) if d.isdigit()]


def test_eval_interrupted_writes_no_results(monkeypatch, tmp_path, capsys):
    """SIGTERM during an evaluation: one line, exit code 143, and no results file."""
    import fcn_jax.cli.eval as eval_cli

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(eval_cli, "evaluate_checkpoint", interrupted)
    monkeypatch.setattr(eval_cli.platform, "setup", lambda *a, **k: None)
    assert eval_cli.main(["--ckpt", str(tmp_path), "--json", str(tmp_path / "r.json")]) == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines() == [
        "eval.py: error: interrupted by SIGTERM; no results were written"]
    assert not (tmp_path / "r.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


@pytest.fixture(scope="module")
def finished_run(data_dir, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 and one validation at step 4."""
    cfg = get_config("shapes", "fcn32s", dataset="shapes/tiny", data_dir=data_dir, model={"width": 1 / 16},
                     steps=4, batch_size=2, crop_size=48, log_every=2, checkpoint_every=2, eval_every=4,
                     eval_batch_size=4)
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    summary = train_lib.train_and_evaluate(cfg, workdir, progress=False, log=lambda _: None)
    return cfg, workdir, summary


def _damage(step_dir, kind):
    """Damages a saved step the ways a crash or a full disk can."""
    state = os.path.join(step_dir, "state")
    if kind == "truncated data":
        files = [os.path.join(d, f) for d, _, fs in os.walk(state) for f in fs if "/d/" in os.path.join(d, f) + "/"]
        for path in files:
            with open(path, "r+b") as f:
                f.truncate(os.path.getsize(path) // 3)
    elif kind == "garbage metadata":
        with open(os.path.join(step_dir, "meta", "metadata"), "w") as f:
            f.write("\x00not json")
    elif kind == "no manifest":
        os.remove(os.path.join(state, "manifest.ocdbt"))


@pytest.mark.parametrize("kind", ["truncated data", "garbage metadata", "no manifest"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, kind):
    import shutil

    from fcn_jax import parallel
    cfg, workdir, _ = finished_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    latest = os.path.join(copy, checkpoint.CHECKPOINTS, "4")
    _damage(latest, kind)
    warnings: list[str] = []
    checkpoints = checkpoint.TrainCheckpointer(copy)
    try:
        state, meta, data_state = checkpoints.restore(
            train_lib.abstract_state(cfg, cfg.model.build(), parallel.make_mesh()), warn=warnings.append)
    finally:
        checkpoints.close()
    assert meta.step == 2 and int(state.step) == 2 and data_state
    assert len(warnings) == 1 and f"checkpoint {latest} cannot be restored" in warnings[0], warnings
    assert os.path.isdir(latest + ".damaged") and not os.path.exists(latest)  # kept for the user, not a step
    expected, _ = checkpoint.load_model(workdir, 2)  # independent read of the intact original step 2
    for a, b in zip(jax_leaves(state.params), jax_leaves(expected["params"])):
        assert (a == b).all()


def jax_leaves(tree):
    import jax
    import numpy as np
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_resume_names_a_different_network_and_a_finished_run_says_so(finished_run):
    cfg, workdir, summary = finished_run
    with pytest.raises(train_lib.ConfigError) as e:
        train_lib.train_and_evaluate(get_config("shapes", "fcn16s", dataset="shapes/tiny", data_dir=cfg.data_dir,
                                                model={"width": 1 / 8}, steps=4), workdir, progress=False)
    assert str(e.value) == (f"{workdir} holds a different network: variant 'fcn32s' there, 'fcn16s' requested; "
                            f"width 0.0625 there, 0.125 requested; use another --workdir or the run's settings")
    logs: list[str] = []
    again = train_lib.train_and_evaluate(cfg, workdir, progress=False, log=logs.append)
    assert again["step"] == 4 and again["scores"]["mean_iu"] == pytest.approx(summary["scores"]["mean_iu"])
    assert logs[-1] == (f"{workdir} is already trained to step 4 (--steps 4); last validation (step 4): mean IU "
                        f"{100 * summary['scores']['mean_iu']:.2f}%; raise --steps to train longer")


def test_the_run_directory_tells_its_story(finished_run):
    """train.log holds the provenance and every console line; metrics.jsonl the per-class IU."""
    import json
    cfg, workdir, summary = finished_run
    with open(os.path.join(workdir, "train.log")) as f:
        text = f.read()
    for needle in ("command: ", "jax ", "devices: ", "git commit: ", "effective config:", "  variant: fcn32s",
                   f"step 4: validation pixel acc. {100 * summary['scores']['pixel_acc']:.2f}%"):
        assert needle in text, needle
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    validation = [r for r in records if "val/mean_iu" in r]
    assert [r["step"] for r in validation] == [4]
    per_class = {k[len("val/iu/"):]: v for k, v in validation[0].items() if k.startswith("val/iu/")}
    assert set(per_class) <= set(data.SHAPES_CLASSES) and "background" in per_class
    import numpy as np
    assert np.nanmean(list(per_class.values())) == pytest.approx(summary["scores"]["mean_iu"])
    events = b"".join(open(os.path.join(d, f), "rb").read() for d, _, fs in os.walk(os.path.join(workdir, "tensorboard"))
                      for f in fs)
    for i in range(train_lib.PANELS):  # image | truth | prediction panels of the validation images
        assert f"val/panel/{i}".encode() in events


def test_a_failed_start_creates_nothing_and_bad_workdirs_are_one_line(data_dir, tmp_path, capsys):
    from fcn_jax.cli import train as train_cli
    base = ["--variant", "fcn32s", "--dataset", "shapes/tiny", "--data-dir", data_dir, "--width", "0.0625",
            "--steps", "2", "--no-progress"]
    workdir = tmp_path / "run"
    assert train_cli.main(base + ["--workdir", str(workdir), "--init", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert not workdir.exists()  # earlier code left an empty run directory behind
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    assert train_cli.main(base + ["--workdir", str(afile)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.py: error: --workdir {afile}: exists and is not a directory"]


def test_a_full_disk_at_a_checkpoint_is_one_line(data_dir, tmp_path, monkeypatch, capsys):
    import errno
    from fcn_jax.cli import train as train_cli

    def full(self, step, *args, **kwargs):
        if step == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(self.workdir, "checkpoints", "4"))
        return real(self, step, *args, **kwargs)

    real = checkpoint.TrainCheckpointer.save
    monkeypatch.setattr(checkpoint.TrainCheckpointer, "save", full)
    workdir = tmp_path / "run"
    argv = ["--variant", "fcn32s", "--dataset", "shapes/tiny", "--data-dir", data_dir, "--width", "0.0625",
            "--steps", "4", "--batch-size", "2", "--crop-size", "48", "--log-every", "2", "--checkpoint-every", "2",
            "--eval-every", "100", "--eval-batch-size", "4", "--workdir", str(workdir), "--no-progress"]
    assert train_cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"train.py: error: {workdir}/checkpoints/4: No space left on device (the checkpoints saved before "
                   f"it are intact, the latest step 2; run again to resume)"]
    _, meta = checkpoint.load_model(str(workdir), "latest")
    assert meta["step"] == 2


def test_an_explicitly_requested_damaged_step_is_one_line(finished_run, tmp_path, capsys):
    import shutil

    from fcn_jax.cli import eval as eval_cli
    _, workdir, _ = finished_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    step_dir = os.path.join(copy, checkpoint.CHECKPOINTS, "4")
    _damage(step_dir, "truncated data")
    assert eval_cli.main(["--ckpt", copy, "--step", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"eval.py: error: --ckpt {step_dir}: cannot be restored ("), err
    assert err[0].endswith("it is damaged: pick another --step")
