"""Process set-up shared by every tool: XLA flags, the persistent compilation cache, ``jax.distributed``.

Call :func:`setup` once, before the first device query (it is what ``train.py``, ``eval.py``,
``predict.py``, ``benchmark.py`` and the console scripts do). Nothing here imports TensorFlow.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import MutableMapping

import jax

# XLA:CPU flags set unless XLA_FLAGS already names them. With jaxlib 0.10 the YNNPACK kernels XLA:CPU
# picks for convolutions compute the weight gradients of the 3x3 convs 4-5x slower than XLA's own
# (Eigen) convolutions; leaving convolutions to Eigen makes the full-width fcn8s train step on a
# 2-core Sapphire Rapids about 1.3x faster (1.8x once fc6 is a matrix product) and costs inference
# nothing. Only the CPU client reads xla_cpu_* flags. They are set only for the jaxlib releases they
# were measured with: XLA aborts on a flag it does not know.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
CPU_XLA_FLAGS_JAXLIB = ("0.10.",)

CACHE_ENV = "FCN_JAX_COMPILATION_CACHE"  # a directory, or '0' / 'off' to disable the cache
DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "fcn_jax", "xla")
CLUSTER_ENV = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID")


def apply_cpu_xla_flags(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Adds :data:`CPU_XLA_FLAGS` to ``XLA_FLAGS`` (those whose name it does not already hold) and
    returns the ones added. Takes effect only before JAX starts its backends (first device query)."""
    from jaxlib import version

    if not version.__version__.startswith(CPU_XLA_FLAGS_JAXLIB):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [flag for flag in CPU_XLA_FLAGS if flag.split("=")[0] not in current]
    if added:
        environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache, so a second run does not recompile its programs.

    ``directory`` defaults to ``$FCN_JAX_COMPILATION_CACHE``, then JAX's own setting
    (``$JAX_COMPILATION_CACHE_DIR``), then ``~/.cache/fcn_jax/xla``; ``FCN_JAX_COMPILATION_CACHE=off``
    disables it. Programs that compile in under a second are not cached. Returns the directory used
    (None: disabled).
    """
    directory = directory or os.environ.get(CACHE_ENV) or jax.config.jax_compilation_cache_dir or DEFAULT_CACHE_DIR
    if directory.lower() in ("0", "off", "false", "no"):
        return None
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError:
        return None  # an unwritable home directory only costs the cache
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return directory


def wait_for_coordinator(address: str, timeout: float, process_id: int | None = None,
                         num_processes: int | None = None) -> None:
    """Waits until something accepts TCP connections at ``address`` ('host:port'); ConnectionError naming
    it after ``timeout`` seconds (XLA's own client would abort the process without a message)."""
    import socket
    import time
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"--coordinator-address {address}: expected host:port")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=min(5.0, max(timeout, 0.1))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise ConnectionError(f"--coordinator-address {address}: nothing answered within {timeout:g} s "
                                      f"({e.strerror or e}); start process 0 there first (this is process "
                                      f"{process_id} of {num_processes})") from None
            time.sleep(0.5)


DISTRIBUTED_TIMEOUT = 300  # seconds every process waits for all others to join (jax's default)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, timeout: int = DISTRIBUTED_TIMEOUT) -> None:
    """Starts ``jax.distributed`` when this is (or may be) a multi-process run.

    With explicit arguments they are used as given; without, JAX auto-detects the cluster (TPU pods,
    SLURM, Open MPI) when one of their environments is present; a plain single process does nothing.
    Says on stderr whom it waits for; raises ConnectionError (one line) when the processes have not all
    joined within ``timeout`` seconds (an unreachable coordinator, a missing process).
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if not explicit and not any(k in os.environ for k in CLUSTER_ENV):
        return
    where = coordinator_address or "the auto-detected coordinator"
    if coordinator_address and process_id not in (None, 0):  # XLA aborts the process if it cannot connect
        wait_for_coordinator(coordinator_address, timeout, process_id, num_processes)
    print(f"jax.distributed: process {process_id if process_id is not None else '?'} of "
          f"{num_processes or '?'} joining {where} (waiting up to {timeout} s)", file=sys.stderr, flush=True)
    try:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=timeout)
    except Exception as e:  # noqa: BLE001  (XLA raises its own runtime error types)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConnectionError(f"--coordinator-address {where}: the {num_processes or '?'} processes did not "
                              f"all join within {timeout} s ({reason})") from None


def skip_absent_tpu(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """With libtpu installed (the dev requirements bring it, for compile-only TPU planning) on a host with
    no TPU chip, jax's first device query starts the TPU runtime anyway, which prints half a dozen lines
    of libtpu errors before jax falls back to the CPU. On such a host with no GPU either, and when neither
    ``JAX_PLATFORMS`` nor ``jax_platforms`` chooses, this sets ``jax_platforms`` to 'cpu' and returns it;
    None: left to jax (no libtpu, a TPU chip or a GPU present, a choice already made, or a jax whose
    hardware probes moved)."""
    if environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
        return None
    try:
        from jax._src import cloud_tpu_init, hardware_utils
        if (cloud_tpu_init.get_tpu_library_path() is None or hardware_utils.num_available_tpu_chips_and_device_id()[0]
                or hardware_utils.has_visible_nvidia_gpu() or hardware_utils.num_available_amd_gpus(stop_at=1)):
            return None
    except (ImportError, AttributeError, TypeError):
        return None
    jax.config.update("jax_platforms", "cpu")
    return "cpu"


def quiet_third_party_logs() -> None:
    """Keeps Orbax's and tfds's routine notices (logged through absl) off the console."""
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
    logging.getLogger("absl").setLevel(logging.ERROR)


def setup(coordinator_address: str | None = None, num_processes: int | None = None,
          process_id: int | None = None, *, compilation_cache: bool = True,
          distributed_timeout: int = DISTRIBUTED_TIMEOUT, verbose: bool = False) -> None:
    """Everything a tool does before touching a device: CPU XLA flags, no start of an absent TPU
    (:func:`skip_absent_tpu`), the compilation cache, quiet third-party logs (unless ``verbose``) and
    (for multi-process runs) ``jax.distributed``."""
    apply_cpu_xla_flags()
    skip_absent_tpu()
    if compilation_cache:
        enable_compilation_cache()
    if not verbose:
        quiet_third_party_logs()
    initialize_distributed(coordinator_address, num_processes, process_id, timeout=distributed_timeout)


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree this package runs from, or None."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(os.path.abspath(__file__)),
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
