"""Shared command-line plumbing: one-line errors with exit code 2, and config files as data."""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any, Callable, NoReturn

USAGE_ERROR = 2


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def fail(prog: str, message: str, code: int = USAGE_ERROR) -> int:
    """Prints ``prog: error: message`` to stderr and returns ``code`` (for ``sys.exit``)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def user_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a ``main`` so that expected errors become one line on stderr and exit code 2.

    ValueError (config, data, weights and checkpoint errors derive from it), FileNotFoundError and
    ImportError (a missing optional dependency) are the user's to fix; anything else is a bug and
    keeps its traceback.
    """
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
                text = str(e).strip().splitlines()
                return fail(prog, text[0] if text else type(e).__name__)
        return run
    return wrap


def read_json_file(path: str, flag: str) -> dict[str, Any]:
    """Reads a JSON object from ``path``; errors name the flag and the file."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise UsageError(f"{flag} {path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{flag} {path}: expected a JSON object of config fields")
    return data


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``PROG: error: MESSAGE (see --help)``, exit 2) instead of usage."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")
