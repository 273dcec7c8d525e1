"""Process set-up: a host without a TPU chip does not start libtpu's runtime (and print its errors)."""
import os
import subprocess
import sys

import pytest

from fcn_jax import platform

SNIPPET = """
import sys
from fcn_jax import platform
chosen = platform.skip_absent_tpu() if sys.argv[1] == "setup" else None
import jax
print(chosen, jax.devices()[0].platform)
"""


def _host_without_accelerators():
    try:
        from jax._src import cloud_tpu_init, hardware_utils
    except ImportError:
        return False
    return (cloud_tpu_init.get_tpu_library_path() is not None
            and not hardware_utils.num_available_tpu_chips_and_device_id()[0]
            and not hardware_utils.has_visible_nvidia_gpu() and not hardware_utils.num_available_amd_gpus(stop_at=1))


@pytest.mark.skipif(not _host_without_accelerators(),
                    reason="needs libtpu installed (pip install -r requirements-dev.txt) on a host with no TPU or GPU")
def test_no_tpu_runtime_start_without_a_tpu():
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                         env.get("PYTHONPATH", "")])

    def run(mode):
        done = subprocess.run([sys.executable, "-c", SNIPPET, mode], env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split(), done.stderr

    (chosen, device), quiet = run("setup")
    assert (chosen, device) == ("cpu", "cpu") and "TPU" not in quiet, quiet
    (chosen, device), noisy = run("plain")  # the control: jax alone starts libtpu, which says so
    assert (chosen, device) == ("None", "cpu") and "TPU" in noisy


def test_an_explicit_choice_is_left_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert platform.skip_absent_tpu() is None
    assert platform.skip_absent_tpu({"JAX_PLATFORMS": "tpu"}) is None
