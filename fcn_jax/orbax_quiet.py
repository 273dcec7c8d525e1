"""Orbax's failure output kept off the console: one re-entrant scope (:func:`quiet`) around fcn-jax's Orbax calls.

Orbax runs each operation in a fresh asyncio event loop and, when one read fails, closes it with the other
TensorStore reads still in flight; their callbacks into the closed loop and their abandoned coroutines then
print pages of tracebacks (sometimes thousands of lines for one damaged checkpoint). Inside the scope those
loops are drained before they close, and what still escapes from Orbax or TensorStore (log records, asyncio's
unretrieved-exception reports, unraisable and thread exceptions) is dropped; anything else passes to the hooks
that were installed before, which are restored when the last scope ends. Every Orbax failure is still raised
to the caller, which reports it in one line.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
import threading
from types import TracebackType
from typing import Any

def _package_dir(name: str) -> str | None:
    try:
        module = __import__(name, fromlist=["__file__"])
    except ImportError:
        return None
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


# Orbax's and TensorStore's source trees: noise whose traceback or log record comes from here is theirs.
_NOISY_DIRS = tuple(d for d in (_package_dir("orbax.checkpoint"), _package_dir("tensorstore")) if d)
_ASYNCIO_NOISE = ("Task exception was never retrieved", "Future exception was never retrieved",
                  "Task was destroyed but it is pending",
                  # asyncio.run (Orbax < 0.11.37 runs every operation through it) reports each failed read it
                  # cancels and awaits when the operation's first failure ends the loop
                  "unhandled exception during asyncio.run() shutdown")


def _noisy_traceback(tb: TracebackType | None) -> bool:
    """Whether a traceback passes through Orbax or TensorStore."""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(_NOISY_DIRS):
            return True
        tb = tb.tb_next
    return False


class _NoiseFilter(logging.Filter):
    """Drops Orbax's own log records (on the ``absl`` logger: every failure is also raised to fcn-jax, which
    reports it) and asyncio's reports of Orbax tasks whose exception nobody retrieved (on ``asyncio``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "absl":
            return not record.pathname.startswith(_NOISY_DIRS)
        if record.name == "asyncio" and record.getMessage().startswith(_ASYNCIO_NOISE):
            from_orbax = "orbax" in record.getMessage() or "tensorstore" in record.getMessage()
            return not (from_orbax or (record.exc_info is not None and _noisy_traceback(record.exc_info[2])))
        return True


class _Quiet:
    """What keeps Orbax's I/O off the console, active while any fcn-jax Orbax call (or training checkpointer)
    is under way; re-entrant and shared by threads (a count), everything restored when the last one leaves.

    - Orbax runs each operation in a fresh asyncio event loop and closes it as soon as the first read or write
      fails, with the operation's other TensorStore reads and writes still in flight: they later call back into
      the closed loop ('RuntimeError: Event loop is closed' through ``sys.unraisablehook``), and their abandoned
      coroutines and tasks are finalised with tracebacks pages long. While active, those loops are closed the
      way :func:`asyncio.run` closes its own: the remaining tasks cancelled and awaited first, so nothing is
      left in flight (the fix at the source).
    - A safety net for what still escapes: Orbax's log records (absl) and asyncio's reports of its unretrieved
      task exceptions are filtered; unraisable exceptions and thread exceptions raised from Orbax or TensorStore
      (or 'Event loop is closed') are dropped; anything else reaches the hooks that were there before. Orbax's
      routine notices (read-only managers, metadata) are among the records filtered.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._depth = 0
        self._saved: dict[str, Any] = {}
        self._filter = _NoiseFilter()
        self.leftovers = False  # a drained loop had tasks in flight: collect their garbage before leaving

    def __enter__(self) -> _Quiet:
        with self._lock:
            if self._depth == 0:
                self._install()
            self._depth += 1
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                if self.leftovers or exc_type is not None:
                    gc.collect()  # abandoned coroutines are finalised now, while the hooks are in place
                    self.leftovers = False
                self._uninstall()

    def _install(self) -> None:
        self._saved = {"unraisablehook": sys.unraisablehook, "excepthook": threading.excepthook}
        logging.getLogger("absl").addFilter(self._filter)
        logging.getLogger("asyncio").addFilter(self._filter)
        sys.unraisablehook = self._unraisable
        threading.excepthook = self._thread_exception
        try:
            from orbax.checkpoint._src import asyncio_utils
        except ImportError:  # a newer Orbax that moved it: the safety net above still holds
            return
        if callable(getattr(asyncio_utils, "_run_sync_via_new_loop", None)):
            self._saved["run_sync"] = (asyncio_utils, asyncio_utils._run_sync_via_new_loop)
            asyncio_utils._run_sync_via_new_loop = self._run_sync_draining

    def _uninstall(self) -> None:
        saved, self._saved = self._saved, {}
        logging.getLogger("absl").removeFilter(self._filter)
        logging.getLogger("asyncio").removeFilter(self._filter)
        # restore a hook only if it is still ours (someone who replaced it meanwhile keeps theirs)
        if sys.unraisablehook == self._unraisable:
            sys.unraisablehook = saved.get("unraisablehook", sys.__unraisablehook__)
        if threading.excepthook == self._thread_exception:
            threading.excepthook = saved.get("excepthook", threading.__excepthook__)
        if "run_sync" in saved:
            module, original = saved["run_sync"]
            if module._run_sync_via_new_loop == self._run_sync_draining:
                module._run_sync_via_new_loop = original

    def _unraisable(self, unraisable: Any) -> None:
        value, obj = unraisable.exc_value, unraisable.object
        closed_loop = isinstance(value, RuntimeError) and str(value) == "Event loop is closed"
        code = getattr(obj.get_coro() if isinstance(obj, asyncio.Task) else obj, "cr_code", None)
        ours = code is not None and code.co_filename.startswith(_NOISY_DIRS)
        if not (closed_loop or ours or _noisy_traceback(unraisable.exc_traceback)):
            self._saved.get("unraisablehook", sys.__unraisablehook__)(unraisable)

    def _thread_exception(self, args: Any) -> None:
        if not _noisy_traceback(args.exc_traceback):
            self._saved.get("excepthook", threading.__excepthook__)(args)

    def _run_sync_draining(self, coro: Any) -> Any:
        """Orbax's ``_run_sync_via_new_loop`` (run ``coro`` in a new loop, no :func:`asyncio.run`: see its
        docstring), closing the loop only once every task it started has finished."""
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(coro)
        finally:
            try:  # the loop is this thread's own: no other thread adds tasks to it
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                if pending:
                    self.leftovers = True
                    for task in pending:
                        task.cancel()
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:  # noqa: BLE001  (draining never hides the operation's own result or error)
                pass
            finally:
                asyncio.set_event_loop(None)
                loop.close()


QUIET = _Quiet()


def quiet() -> _Quiet:
    """The scope of one Orbax operation (see :class:`_Quiet`): ``with quiet(): ...``."""
    return QUIET
