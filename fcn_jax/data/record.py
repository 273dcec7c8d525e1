"""``WORKDIR/dataset.json``: what each run of a training workdir trained on, kept across resumes.

Every start and resume appends a record (start step, time, the dataset's summary with a fingerprint of a
folder dataset's files); a folder changed since the previous record is reported as a warning with added /
removed / changed counts. Written atomically (:mod:`fcn_jax.io`); an unreadable record is moved aside,
never deleted.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from fcn_jax.io import write_json

DATASET_RECORD = "dataset.json"


def _read_dataset_record(path: str, log: Callable[[str], None]) -> dict[str, Any]:
    """dataset.json as ``{'runs': [...], 'files': {digest: file table}}``. A record of the earlier form (one
    dataset summary) becomes the first run, of unknown start step; an unreadable one is moved aside to
    ``dataset.json.damaged`` (never deleted) and a new record starts."""
    if not os.path.exists(path):
        return {"runs": [], "files": {}}
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        if isinstance(record, dict) and "runs" not in record and "name" in record:
            return {"runs": [{"start_step": None, "dataset": record}], "files": {}}
        if not (isinstance(record, dict) and isinstance(record.get("runs"), list)
                and isinstance(record.get("files", {}), dict)):
            raise ValueError("expected an object with a list of runs")
        return {"runs": record["runs"], "files": dict(record.get("files", {}))}
    except (OSError, ValueError) as e:
        aside, k = path + ".damaged", 1
        while os.path.exists(aside):  # an earlier one is kept too
            k += 1
            aside = f"{path}.damaged{k}"
        os.replace(path, aside)
        log(f"warning: {path}: cannot be read ({e}); moved to {aside}, a new record of the dataset starts")
        return {"runs": [], "files": {}}


def _dataset_changes(old: dict[str, Any], old_files: dict[str, str] | None, new: dict[str, Any],
                     new_files: dict[str, str] | None) -> dict[str, Any] | None:
    """How a folder dataset differs from an earlier run's record of it (summary ``old`` with its file table
    ``old_files``, or None if that record has none): added / removed / changed examples, the examples kept that
    moved between splits and the classes / split-list files changed; None when it did not change."""
    from fcn_jax.data.folder import fingerprint_changes
    if old_files is not None and new_files is not None:
        if old.get("fingerprint") == new.get("fingerprint"):
            return None
        changes = fingerprint_changes(old_files, new_files)
    else:  # an earlier record without file fingerprints: examples by stem, edits unknown
        before = {stem for stems in old.get("stems", {}).values() for stem in stems}
        after = {stem for stems in new.get("stems", {}).values() for stem in stems}
        if before == after:
            return None
        changes = {"added": len(after - before), "removed": len(before - after), "changed": None, "other_files": []}
    split_of = lambda summary: {stem: split for split, stems in summary.get("stems", {}).items()  # noqa: E731
                                for stem in stems}
    old_split, new_split = split_of(old), split_of(new)
    changes["moved"] = sum(old_split[stem] != split for stem, split in new_split.items() if stem in old_split)
    return changes


def record_run(workdir: str, dataset: str, data_dir: str | None, start: int, log: Callable[[str], None],
               **options: Any) -> dict[str, Any]:
    """Adds the run that starts (or resumes) at step ``start`` on ``dataset`` (read with ``options``, e.g.
    ``void``, ``binary``) to ``WORKDIR/dataset.json`` and returns it.

    dataset.json keeps every run's record, oldest first: ``{'runs': [{'start_step', 'time', 'dataset': the
    dataset's summary (:func:`fcn_jax.data.dataset_summary`), 'changes' (when it changed)}, ...], 'files':
    {fingerprint digest: file table}}``, a folder dataset's file table (:func:`fcn_jax.data.dataset_files`)
    stored once per distinct folder state. When the folder differs from the previous run's record, a warning
    says how (examples added, removed, changed; kept ones moved between splits; classes / list files) and the
    run's ``changes`` record it (``since_step``: ``start``).
    """
    from fcn_jax import data as data_lib
    summary = data_lib.dataset_summary(dataset, data_dir, **options)
    files = data_lib.dataset_files(dataset, data_dir, **options)
    path = os.path.join(workdir, DATASET_RECORD)
    record = _read_dataset_record(path, log)
    run: dict[str, Any] = {"start_step": start, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dataset": summary}
    last = record["runs"][-1] if record["runs"] else None
    old = last.get("dataset") if isinstance(last, dict) else None
    if isinstance(old, dict) and old.get("name") == summary["name"]:  # another dataset: check_resume said so
        digest = (old.get("fingerprint") or {}).get("digest")
        changes = _dataset_changes(old, record["files"].get(digest), summary, files)
        if changes is not None:
            run["changes"] = {"since_step": start, **changes}
            counts = (f"{changes['added']} added, {changes['removed']} removed, {changes['changed']} changed"
                      if changes["changed"] is not None else
                      f"{changes['added']} added, {changes['removed']} removed (edits are not known: the earlier "
                      "record has no file fingerprints)")
            if changes["moved"]:
                counts += f", {changes['moved']} kept example(s) moved between splits"
            if changes["other_files"]:
                counts += f", {' and '.join(changes['other_files'])} changed"
            log(f"warning: dataset {summary['name']} changed since step {start}: {counts}; {DATASET_RECORD} keeps "
                "the record of each run")
    if files is not None:
        record["files"][summary["fingerprint"]["digest"]] = files
    record["runs"].append(run)
    write_json(path, record)
    return run
