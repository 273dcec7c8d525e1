"""Compiled programs: a ``jax.jit`` that keeps a bounded number of them alive.

Every distinct input shape compiles one program, and ``jax.jit`` keeps each for the life of the function.
Reference-protocol runs feed every image at its own size, hundreds of shapes, and on the CPU backend each
program holds its JIT-compiled code in memory mappings (about 190 for an fcn8s forward pass, 700 for a
training step, measured with ``/proc/self/maps``); Linux allows 65530 per process (``vm.max_map_count``),
so about 90 distinct training shapes crashed the process ("LLVM compilation error: Cannot allocate
memory", then a segfault). :func:`bounded_jit` drops the compiled programs once ``limit`` distinct
shapes are live; a shape seen again compiles again (from the persistent compilation cache when it is on).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

LIVE_PROGRAMS = 32  # compiled shapes kept per function: 32 training steps use ~22k of Linux's 65530 maps


def _leaf_key(x: Any) -> Any:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return np.shape(x), x.dtype
    if x is None or isinstance(x, (bool, str)):  # the flags functions take as static arguments
        return type(x), x
    return type(x)


def signature(args: tuple, kwargs: dict) -> tuple:
    """The tree structure of ``(args, kwargs)`` and each leaf's shape and dtype (bools, strings and None by
    value, as static flags are): what makes ``jax.jit`` compile a new program."""
    leaves, tree = jax.tree.flatten((args, kwargs))
    return tree, tuple(_leaf_key(x) for x in leaves)


class BoundedJit:
    """``jax.jit(fun, **jit_kwargs)`` that clears its compiled programs before compiling the
    ``limit + 1``-th distinct :func:`signature`. Results are the jitted function's; ``lower``, ``trace``,
    ``eval_shape`` and the other attributes are passed through."""

    def __init__(self, fun: Callable, limit: int | None = None, **jit_kwargs: Any) -> None:
        limit = LIVE_PROGRAMS if limit is None else limit
        if limit < 1:
            raise ValueError(f"limit {limit}: at least one compiled program must be kept")
        self.jitted, self.limit = jax.jit(fun, **jit_kwargs), limit
        self.live: set[tuple] = set()
        self.clears = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = signature(args, kwargs)
        if key not in self.live:
            if len(self.live) >= self.limit:
                self.jitted.clear_cache()
                self.live.clear()
                self.clears += 1
            self.live.add(key)
        return self.jitted(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "jitted":  # not set yet (a failed __init__, copy): no recursion
            raise AttributeError(name)
        return getattr(self.jitted, name)


def bounded_jit(fun: Callable, limit: int | None = None, **jit_kwargs: Any) -> BoundedJit:
    """:class:`BoundedJit`: ``jax.jit(fun, **jit_kwargs)`` with at most ``limit`` (default
    :data:`LIVE_PROGRAMS`) compiled shapes alive."""
    return BoundedJit(fun, limit, **jit_kwargs)
