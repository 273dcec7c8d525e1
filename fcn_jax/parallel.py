"""Devices: one data-parallel mesh over every device of every process, and its shardings.

Parameters and optimizer state are replicated; batches are split along the leading axis over the
``'data'`` mesh axis. Multi-host runs call :func:`initialize_distributed` first.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Starts ``jax.distributed`` when this is (or may be) a multi-process run.

    With explicit arguments they are used as given; without, JAX auto-detects the cluster (TPU pods,
    SLURM, Open MPI) when one of their environments is present; a plain single process does nothing.
    """
    explicit = coordinator_address is not None or num_processes is not None or process_id is not None
    if explicit:
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id)
    elif any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                                       "CLOUD_TPU_TASK_ID")):
        jax.distributed.initialize()


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, optimizer state, metrics)."""
    return NamedSharding(mesh, P())


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the ``'data'`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch: int, mesh: Mesh, flag: str = "--batch-size") -> None:
    """Raises ValueError unless ``global_batch`` divides evenly over the mesh's devices."""
    n = mesh.devices.size
    if global_batch % n:
        raise ValueError(f"{flag}={global_batch} must be a multiple of the number of devices ({n})")


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Places every array of ``tree`` on all devices of ``mesh``, replicated."""
    return jax.device_put(tree, replicated(mesh))
