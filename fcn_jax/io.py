"""Atomic file writes in one place: a file written here appears complete or not at all.

Each writer writes a temporary file beside the target (same directory, so one filesystem) and renames it
onto the target with :func:`os.replace` only once the write has succeeded. On any failure (an exception,
Ctrl-C) the temporary file is removed and a target that existed before is left unchanged; a reader never
sees a half-written file. Parent directories are created. The temporary name is hidden and keeps the
target's suffix (``.scores.tmp-<pid>-<hex>.json``), so tools that pick a format by suffix (PIL's
``Image.save``, ``np.save``, matplotlib's ``savefig``) write the same bytes as to the target itself.

Results that belong together (an image's label PNG, overlay and probabilities) are a group:
:func:`atomic_group` renames them into place together and undoes the group if anything fails, and a
:class:`Manifest` (a JSON-lines file in the output directory: the settings, then one line per complete
group) is what marks a group done, so that an interrupted run can be continued. :func:`is_full_disk`
tells a full disk (or quota, or file size limit) from other write errors.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

FULL_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # no space, quota, RLIMIT_FSIZE


class WriteError(Exception):
    """Outputs that could not be written (a full disk, a read-only directory): the message is one line
    naming the directory and how many results are complete; the tools exit with code 1."""


def is_full_disk(error: BaseException) -> bool:
    """Whether ``error`` is a write failing for want of space: ENOSPC, EDQUOT or EFBIG (a file size limit)."""
    return isinstance(error, OSError) and error.errno in FULL_DISK_ERRNOS


def error_text(error: BaseException) -> str:
    """An OSError's reason without its file name (``No space left on device``), else the first line."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


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


def write_new(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to the new file ``path`` (a temporary path of :func:`atomic_path` or :func:`atomic_group`),
    flushed to disk."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Writes ``data`` to ``path`` atomically (flushed to disk before the rename); returns ``path``."""
    with atomic_path(path) as tmp:
        write_new(tmp, data)
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf8") -> str:
    """Writes ``text`` to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, record: Any) -> str:
    """Writes ``record`` to ``path`` atomically as JSON indented by 2, with a final newline; returns ``path``.

    The record is serialised before any file is opened, so one json cannot encode leaves nothing behind.
    """
    return write_text(path, json.dumps(record, indent=2) + "\n")


def remove_files(paths: Sequence[str | os.PathLike]) -> None:
    """Removes those of ``paths`` that exist (files only; errors ignored)."""
    for path in paths:
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def atomic_group(paths: Sequence[str | os.PathLike],
                 record: Callable[[], None] | None = None) -> Iterator[list[str]]:
    """Writes files that belong together: yields one temporary path per target (as :func:`atomic_path`);
    when the block succeeds, renames them all onto their targets and then calls ``record`` (e.g. a
    :meth:`Manifest.add`). If the block fails, the temporaries are removed and the targets are as before;
    if a rename or ``record`` fails (or an interrupt arrives meanwhile), every target of the group is
    removed: a group is never left part new, part old or part missing with a record saying it is done.
    """
    targets = [os.path.realpath(os.fspath(p)) for p in paths]
    for directory in {os.path.dirname(t) for t in targets}:
        os.makedirs(directory, exist_ok=True)
    temps = [temp_path(t) for t in targets]
    try:
        yield temps
    except BaseException:
        remove_files(temps)
        raise
    try:
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
        if record is not None:
            record()
    except BaseException:
        remove_files(temps + targets)
        raise


def _fsync_directory(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json_lines(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON-lines file; a line that is not complete JSON (a torn last line) is skipped."""
    records = []
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break  # torn: the write of this line did not finish
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records


def append_json_line(path: str | os.PathLike, record: Any) -> None:
    """Appends ``record`` as one JSON line to ``path`` with one write, flushed to disk. A write that fails
    (a full disk, an interrupt) is undone: the file is cut back to its earlier length; a torn last line
    left by a killed process is cut off before appending."""
    data = (json.dumps(record) + "\n").encode("utf8")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size:
            chunk = min(size, 1 << 16)
            tail = os.pread(fd, chunk, size - chunk)
            cut = tail.rfind(b"\n")
            if not tail.endswith(b"\n") and (cut >= 0 or chunk == size):
                size = size - chunk + cut + 1
                os.ftruncate(fd, size)
        try:
            written = os.pwrite(fd, data, size)
            if written != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
            os.fsync(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def _plain(value: Any) -> Any:
    """``value`` as JSON gives it back (tuples as lists), for comparisons with what a manifest recorded."""
    return json.loads(json.dumps(value))


class Manifest:
    """The record of an output directory's complete result groups: ``<directory>/<name>``, JSON lines, the
    first ``{"settings": {...}}`` (what produced the results), then ``{"key": ..., "files": {name: size},
    ...}`` per complete group, appended once the group's files are all in place (:func:`atomic_group`).

    A group counts as complete (:meth:`complete`) while every file it lists exists with the recorded size.
    Reading tolerates a torn last line (a killed process); nothing is written until :meth:`begin` or
    :meth:`add`.
    """

    def __init__(self, directory: str | os.PathLike, name: str):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, name)
        self.settings: dict[str, Any] | None = None
        self.entries: dict[str, dict[str, Any]] = {}
        if not os.path.isfile(self.path):
            return
        try:
            records = read_json_lines(self.path)
        except OSError:
            return
        if records and isinstance(records[0], dict) and isinstance(records[0].get("settings"), dict):
            self.settings = records[0]["settings"]
            for entry in records[1:]:
                if isinstance(entry, dict) and isinstance(entry.get("key"), str) \
                        and isinstance(entry.get("files"), dict):
                    self.entries[entry["key"]] = entry

    @property
    def exists(self) -> bool:
        """Whether the directory holds a readable manifest (its settings line at least)."""
        return self.settings is not None

    def differences(self, settings: Mapping[str, Any]) -> list[str]:
        """``'name: recorded -> given'`` for each of ``settings`` that differs from the recorded settings
        (none when nothing is recorded)."""
        if self.settings is None:
            return []
        given = _plain(dict(settings))
        return [f"{key}: {json.dumps(self.settings.get(key))} -> {json.dumps(value)}"
                for key, value in given.items() if self.settings.get(key) != value]

    def begin(self, settings: Mapping[str, Any]) -> None:
        """Starts a new record of ``settings`` with no group done (replacing any earlier one, atomically)."""
        settings = _plain(dict(settings))
        write_text(self.path, json.dumps({"settings": settings}) + "\n")
        _fsync_directory(self.directory)
        self.settings, self.entries = settings, {}

    def complete(self, key: str) -> dict[str, Any] | None:
        """The entry of group ``key`` if it is recorded and all its files are in place with their sizes."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        for name, size in entry["files"].items():
            try:
                if os.path.getsize(os.path.join(self.directory, name)) != size:
                    return None
            except OSError:
                return None
        return entry

    def add(self, key: str, paths: Sequence[str | os.PathLike], **extra: Any) -> None:
        """Records group ``key`` as complete: its files (paths in the directory, recorded relative to it)
        with their sizes, and ``extra``."""
        files = {os.path.relpath(os.fspath(p), self.directory): os.path.getsize(p) for p in paths}
        entry = _plain({**extra, "key": key, "files": files})
        append_json_line(self.path, entry)
        self.entries[key] = entry

    def remove(self) -> None:
        """Deletes the manifest file."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)
        self.settings, self.entries = None, {}


def output_manifest(flag: str, directory: str, name: str, settings: Mapping[str, Any], overwrite: bool, *,
                    results: str, files: str, suffixes: tuple[str, ...]) -> Manifest:
    """The manifest ``name`` of the output directory given as ``flag`` (read, not yet written). Raises
    ValueError naming the flag when ``directory`` is a file, or, unless ``overwrite``, holds ``results`` made
    with other ``settings`` or ``files`` (names ending in ``suffixes``) without a record of the run that made
    them: continuing there would mix or replace earlier outputs."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{flag} {directory}: exists and is not a directory")
    manifest = Manifest(directory, name)
    if overwrite or not os.path.isdir(directory):
        return manifest
    if manifest.exists:
        differences = manifest.differences(settings)
        if differences:
            raise ValueError(other_settings(flag, directory, results, differences))
        return manifest
    existing = sorted(f for f in os.listdir(directory) if f.endswith(suffixes))
    if existing:
        raise ValueError(f"{flag} {directory} already holds {len(existing)} {files} (e.g. {existing[0]}) but no "
                         f"record of the run that made them; pass --overwrite to replace them, or choose another "
                         f"directory")
    return manifest


def other_settings(flag: str, directory: str, results: str, differences: Sequence[str]) -> str:
    """The message for outputs in ``directory`` made with other settings (``differences``)."""
    return (f"{flag} {directory} holds {results} made with other settings ({'; '.join(differences)}); pass "
            f"--overwrite to replace them, or choose another directory")
