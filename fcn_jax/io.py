"""Atomic file writes in one place: a file written here appears complete or not at all.

Each writer writes a temporary file beside the target (same directory, so one filesystem) and renames it
onto the target with :func:`os.replace` only once the write has succeeded. On any failure (an exception,
Ctrl-C) the temporary file is removed and a target that existed before is left unchanged; a reader never
sees a half-written file. Parent directories are created. The temporary name is hidden and keeps the
target's suffix (``.scores.tmp-<pid>-<hex>.json``), so tools that pick a format by suffix (PIL's
``Image.save``, ``np.save``, matplotlib's ``savefig``) write the same bytes as to the target itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any


def temp_path(path: str | os.PathLike) -> str:
    """A fresh temporary name beside ``path`` (hidden, unique to this process and call, same suffix)."""
    directory, name = os.path.split(os.path.realpath(os.fspath(path)))
    stem, suffix = os.path.splitext(name)
    return os.path.join(directory, f".{stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path to write ``path``'s content to; renamed onto ``path`` if the block succeeds,
    removed if it raises (``path`` is then as before). E.g. ``with atomic_path(p) as tmp: image.save(tmp)``.
    """
    target = os.path.realpath(os.fspath(path))  # through a symlink, as open(path, 'w') writes
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename); returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf8") -> str:
    """Writes ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, record: Any) -> str:
    """Writes ``record`` to ``path`` atomically as JSON indented by 2, with a final newline; returns ``path``.

    The record is serialised before any file is opened, so one json cannot encode leaves nothing behind.
    """
    return write_text(path, json.dumps(record, indent=2) + "\n")
