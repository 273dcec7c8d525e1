"""Devices: one data-parallel mesh over every device of every process, and its shardings.

Parameters and optimizer state are replicated; batches are split along the leading axis over the
``'data'`` mesh axis. Multi-host runs start ``jax.distributed`` first (:func:`fcn_jax.platform.setup`).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


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
