"""A model's variables: ``{'params': ..., <collection>: ...}``, every collection flax gives (``batch_stats`` of
BatchNorm backbones besides the parameters). Training, checkpoints, evaluation, inference, the loader and the
converters all pass the whole dict; these helpers are the one place it is taken apart and put together.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PARAMS = "params"


def as_variables(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A variables dict (any mapping with a ``'params'`` entry, other collections kept) as a plain dict, or a
    bare parameter tree (no ``'params'`` key) wrapped as ``{'params': tree}``."""
    tree = dict(tree)
    return tree if PARAMS in tree else {PARAMS: tree}


def model_state(variables: Mapping[str, Any]) -> dict[str, Any]:
    """The collections besides ``params`` (``{}`` for the Caffe family; ``{'batch_stats': ...}`` with
    BatchNorm)."""
    return {k: v for k, v in dict(variables).items() if k != PARAMS}


def join(params: Any, state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{'params': params, **state}``: the variables of a parameter tree and its model state."""
    return {PARAMS: params, **dict(state or {})}
