"""train.py end to end: interruption loses nothing, SIGTERM saves, multi-host training, learning happens.

Every run is a real ``python train.py`` subprocess on the tiny shapes split. A persistent compilation
cache shared by the subprocesses keeps the repeated runs fast. Runs that need no other run (the non-finite
loss, the unreachable coordinator) start with the module (``early_runs``), beside the kill test, whose
resumed runs keep one core busy at a time.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fcn_jax import checkpoint, data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(REPO, "train.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory, early_runs):
    root = tmp_path_factory.mktemp("train_loop")
    data_dir = str(root / "tfds")
    data.prepare("shapes/tiny", data_dir)
    environ = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
                   JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    environ.pop("XLA_FLAGS", None)
    env = {"root": root, "data_dir": data_dir, "env": environ, "early": early_runs}
    for test, args in EARLY.items():  # the runs that wait for no other run start now, beside the first test
        if early_runs.selected(test):
            early_runs.start(test, args(env), env=environ)
    return env


def tiny_args(env, workdir, steps, **extra):
    args = [sys.executable, TRAIN, "--variant", "fcn16s", "--dataset", "shapes/tiny", "--data-dir", env["data_dir"],
            "--workdir", str(workdir), "--width", "0.0625", "--steps", str(steps), "--batch-size", "2",
            "--crop-size", "48", "--checkpoint-every", "2", "--log-every", "2", "--eval-every", "1000",
            "--eval-batch-size", "4", "--no-progress"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def saved_steps(workdir):
    path = os.path.join(workdir, checkpoint.CHECKPOINTS)
    if not os.path.isdir(path):
        return []
    return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def start_and_signal(args, env, workdir, sig, after_step_above):
    """Starts a run, waits for a checkpoint newer than ``after_step_above``, sends ``sig``."""
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any(s > after_step_above for s in saved_steps(workdir)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def run(args, env):
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


@contextlib.contextmanager
def beside(*runs):
    """Starts ``(args, env)`` runs in the background and, on leaving, waits for them and checks they
    succeeded. A run mostly keeps one core busy, so on two cores a run beside another costs little."""
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for args, env in runs]
    try:
        yield procs
    except BaseException:
        for p in procs:
            p.kill()
        raise
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[-2000:] for o in outs)


def final_params(workdir):
    variables, meta = checkpoint.load_model(str(workdir), "latest")
    return jax.tree.leaves(variables), meta


def test_kill_sigterm_and_resume_equal_uninterrupted(env):
    steps = 14
    straight = env["root"] / "straight"
    broken = env["root"] / "broken"
    with beside((tiny_args(env, straight, steps), env["env"])):  # the uninterrupted run, meanwhile
        code, out = start_and_signal(tiny_args(env, broken, steps), env["env"], broken, signal.SIGKILL, 0)
        assert code == -signal.SIGKILL, out[-2000:]
        killed_at = max(saved_steps(broken))
        assert killed_at < steps, "the run finished before it could be killed"

        code, out = start_and_signal(tiny_args(env, broken, steps), env["env"], broken, signal.SIGTERM, killed_at)
        assert code == 128 + signal.SIGTERM, out[-2000:]  # saved, and the shell learns it was stopped
        assert f"resuming from step {killed_at}" in out
        assert "received signal" in out
        stopped_at = max(saved_steps(broken))
        assert killed_at < stopped_at < steps

        out = run(tiny_args(env, broken, steps), env["env"])
    assert f"resuming from step {stopped_at}" in out
    a, meta_a = final_params(straight)
    b, meta_b = final_params(broken)
    assert meta_a["step"] == meta_b["step"] == steps
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)
    # the learning-curve picture and metrics are there for the finished run
    assert os.path.exists(broken / "learning_curves.png")
    steps_logged = [json.loads(line)["step"] for line in open(broken / "metrics.jsonl")]
    assert max(steps_logged) == steps


def non_finite_args(env):
    return tiny_args(env, env["root"] / "nan", 6, optimizer="sgd", lr=1e12, loss="sum", momentum=0.99)


def test_non_finite_loss_stops_with_message(env):
    workdir = env["root"] / "nan"
    code, out, err = env["early"].result("test_non_finite_loss_stops_with_message", 600)
    assert code == 1, out[-1000:] + err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("train.py: error: non-finite loss") and "at step" in line
    for s in saved_steps(workdir):  # whatever checkpoint survived holds finite numbers
        for leaf in final_params(workdir)[0]:
            assert np.all(np.isfinite(np.asarray(leaf)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_one_restores(env):
    """Two processes (one CPU device each) train one global batch stream through jax.distributed; a
    single process with two devices trains the same and restores the multi-host checkpoint."""
    port = _free_port()
    multi = env["root"] / "multihost"
    single = env["root"] / "single2dev"
    single_env = dict(env["env"], XLA_FLAGS="--xla_force_host_platform_device_count=2")
    with beside(*[(tiny_args(env, multi, 4, coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i,
                             eval_every=4), env["env"]) for i in range(2)],
                (tiny_args(env, single, 4, eval_every=4), single_env)):  # all three at once
        pass
    a, meta = final_params(multi)
    b, _ = final_params(single)
    assert meta["step"] == 4
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def unreachable_args(env):
    return tiny_args(env, env["root"] / "nowhere", 2, coordinator_address="127.0.0.1:1", num_processes=2,
                     process_id=1, distributed_timeout=2)


def test_an_unreachable_coordinator_is_one_line(env):
    """Earlier code waited silently (and XLA's client aborts the process when the deadline passes)."""
    workdir = env["root"] / "nowhere"
    code, _, err = env["early"].result("test_an_unreachable_coordinator_is_one_line", 120)
    assert code == 1, err[-2000:]
    assert err.strip().splitlines()[-1] == (
        "train.py: error: --coordinator-address 127.0.0.1:1: nothing answered within 2 s (Connection refused); "
        "start process 0 there first (this is process 1 of 2)")
    assert not workdir.exists()


def test_a_signal_to_one_process_stops_all_at_the_same_step(env):
    """SIGTERM to process 1 only: both processes agree at the next log boundary, save that step together
    (a collective) and exit 143; earlier code let each decide alone, so they could save different steps
    and hang."""
    port = _free_port()
    workdir = env["root"] / "multistop"
    args = [tiny_args(env, workdir, 40, coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=i)
            for i in range(2)]
    procs = [subprocess.Popen(a, env=env["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for a in args]
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not saved_steps(workdir) and procs[1].poll() is None:
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2, "\n".join(o[-2000:] for o in outs)
    said = [line for line in outs[0].splitlines() if "received signal 15: saved step" in line]
    assert len(said) == 1, outs[0][-2000:]
    stopped_at = int(said[0].split("saved step ")[1].split()[0])
    assert stopped_at < 40 and stopped_at % 2 == 0  # a log boundary (--log-every 2)
    assert max(saved_steps(workdir)) == stopped_at


# The runs the module starts at once (when their test is selected), by test.
EARLY = {"test_non_finite_loss_stops_with_message": non_finite_args,
         "test_an_unreachable_coordinator_is_one_line": unreachable_args}


@pytest.mark.parametrize("extra, message", [
    (["--inputs", "hha"], "--dataset shapes/tiny (train) does not fit fcn16s: examples have no 'hha' field"),
    (["--trainable", "nothing/.*"], "--trainable 'nothing/.*' matches no parameter"),
])
def test_choices_that_do_not_fit_create_no_workdir(env, capsys, extra, message):
    """A usage error found in set-up (the dataset's fields, regular expressions over the parameters) is one
    line, exit 2, before anything is created in the workdir (issue 24, item 11)."""
    from fcn_jax.cli import train as train_cli
    workdir = env["root"] / f"unfit{len(extra[1])}"
    assert train_cli.main(tiny_args(env, workdir, 2)[2:] + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"train.py: error: {message}"), err
    assert not workdir.exists()
