"""What the training loop says about an interruption is what is on disk (in-process, signals at controlled points)."""
from __future__ import annotations

import os
import re
import signal

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
