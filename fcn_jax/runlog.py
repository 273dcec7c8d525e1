"""A training run's log: every line the console shows, printed above the progress bar and kept in
``WORKDIR/train.log`` with the run's provenance (date, command, versions, devices, git commit).

Lines logged before the workdir may be created (it is created only once the run's inputs are validated)
are kept and written first when :meth:`RunLog.open` is called.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys
from typing import Any, Callable, TextIO

LOG_FILE = "train.log"
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "fcn-jax")


def provenance() -> list[str]:
    """Header lines: date, command line, Python and package versions, devices, git commit."""
    import jax

    from fcn_jax.platform import git_commit
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    devices = jax.devices()
    return [
        f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"command: {' '.join([os.path.basename(sys.argv[0] or 'python')] + sys.argv[1:])}",
        f"python {platform.python_version()}; " + ", ".join(versions),
        f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), "
        f"{jax.process_count()} process(es)",
        f"git commit: {git_commit() or 'unknown'}",
    ]


class RunLog:
    """Callable logger: ``log(message)`` shows ``message`` (through ``console``, or above ``bar`` when one
    is attached and the console is ``print``) and appends it to ``train.log`` once :meth:`open` is called."""

    def __init__(self, console: Callable[[str], None] = print):
        self.console = console
        self.bar: Any = None
        self.path: str | None = None
        self._file: TextIO | None = None
        self._pending: list[str] = []

    def __call__(self, message: str) -> None:
        if self.bar is not None and self.console is print and not getattr(self.bar, "disable", True):
            self.bar.write(message)
        else:
            self.console(message)
        if self._file is not None:
            self._file.write(message + "\n")
            self._file.flush()
        else:
            self._pending.append(message)

    def open(self, workdir: str) -> str:
        """Starts ``WORKDIR/train.log`` (appending: a resumed run continues it) with a provenance header
        and the lines logged so far; returns its path."""
        self.path = os.path.join(workdir, LOG_FILE)
        self._file = open(self.path, "a")
        self._file.write("\n".join(["=" * 80, *provenance(), *self._pending]) + "\n")
        self._file.flush()
        self._pending = []
        return self.path

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
