"""Training logs: one JSON line per record in ``metrics.jsonl`` and TensorBoard event files.

Only the process that owns the writer (process 0 in multi-host runs) writes; others get a no-op.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

from fcn_jax.io import append_json_line
from fcn_jax.tensorboard import EventFileWriter


class SummaryWriter:
    """Appends ``{"step": ..., **scalars}`` to ``WORKDIR/metrics.jsonl`` and to ``WORKDIR/tensorboard``."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        """Records float scalars (names like 'train/loss', 'val/mean_iu') at ``step``."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        append_json_line(self.path, {"step": int(step), "time": time.time(), **values})  # whole lines only
        self._tb.scalars(step, values)

    def write_images(self, step: int, images: dict[str, Any]) -> None:
        """Records (H, W, 3) uint8 pictures (e.g. 'val/panel/0') at ``step`` in TensorBoard."""
        if not self.enabled:
            return
        self._tb.images(step, images)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(workdir_or_file: str) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``; a resumed run's repeated steps keep the last record."""
    path = workdir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    records: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written right now
                continue
            records[(rec["step"], tuple(sorted(k for k in rec if k not in ("step", "time"))))] = rec
    return sorted(records.values(), key=lambda r: r["step"])
