"""The command-line tools: ``fcn-train``, ``fcn-eval``, ``fcn-predict``, ``fcn-benchmark``, ``fcn-convert``,
``fcn-score``, ``fcn-dataset``.

One module per tool (:mod:`fcn_jax.cli.train`, ...), each with ``main(argv) -> exit code``; the root
scripts ``train.py`` etc. and the console scripts call them. This module holds what they share:
one-line errors with exit code 2, the model-loading flags of eval and predict, and JSON files.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
from typing import Any, Callable, NoReturn

USAGE_ERROR = 2


class UsageError(ValueError):
    """Bad input from the user: reported as one line, exit code 2."""


def fail(prog: str, message: str, code: int = USAGE_ERROR) -> int:
    """Prints ``prog: error: message`` to stderr and returns ``code`` (for ``sys.exit``)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def interrupted_code(signum: int) -> int:
    """The shell's exit code for a process stopped by signal ``signum`` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signum)


def user_errors(prog: str, interrupted: str = "stopped") -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorates a ``main`` so that expected errors become one line on stderr and exit code 2.

    ValueError (config, data, weights and checkpoint errors derive from it), FileNotFoundError and
    ImportError (a missing optional dependency) are the user's to fix; a full disk (ENOSPC, EDQUOT,
    EFBIG) is one line with exit code 1; anything else is a bug and keeps its traceback. Ctrl-C and SIGTERM (which the training loop handles itself while it runs)
    become one line ``PROG: interrupted by SIGINT; <interrupted>`` and exit code 130 / 143.
    """
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            previous = None
            try:
                previous = signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM behaves as Ctrl-C does
            except ValueError:  # not the main thread
                pass
            try:
                return main(*args, **kwargs)
            except (ValueError, FileNotFoundError, NotADirectoryError, ImportError) as e:
                text = str(e).strip().splitlines()
                return fail(prog, text[0] if text else type(e).__name__)
            except OSError as e:  # a full disk (or quota, file size limit) anywhere: the machine's, exit 1
                from fcn_jax.io import error_text, is_full_disk
                if not is_full_disk(e):
                    raise
                return fail(prog, f"{e.filename or 'output'}: {error_text(e)}", code=1)
            except KeyboardInterrupt as e:
                signum = e.args[0] if e.args and isinstance(e.args[0], int) else signal.SIGINT
                sys.stdout.flush()
                return fail(prog, f"interrupted by {signal.Signals(signum).name}; {interrupted}",
                            code=interrupted_code(signum))
            finally:
                if previous is not None:
                    signal.signal(signal.SIGTERM, previous)
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



def parse_step(text: str) -> str | int:
    """``--step``: 'best', 'latest' or a step number."""
    from fcn_jax.checkpoint import STEP_CHOICES
    if text in STEP_CHOICES:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'best', 'latest' or a step number, got {text!r}") from None


def parse_scales(text: str) -> tuple[float, ...]:
    """``--scales``: comma-separated positive factors, e.g. '0.5,1,1.5'."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 and math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive numbers, got {text!r}")
    return values


def add_model_flags(parser: argparse.ArgumentParser, onnx: bool = False) -> None:
    """Flags shared by eval and predict: the checkpoint, its step, dtype and test-time augmentation
    (``onnx``: the tool also runs exported ``.onnx`` files)."""
    from fcn_jax.config import DTYPES
    parser.add_argument("--ckpt", required=True, metavar="PATH",
                        help="training workdir, model checkpoint directory or weights file"
                             + (", or an exported .onnx file (run on onnxruntime)" if onnx else ""))
    parser.add_argument("--step", type=parse_step, default="best", metavar="best|latest|N",
                        help="which step of a checkpoint directory (default: best)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="compute dtype override (default: the checkpoint's)")
    parser.add_argument("--flip", action="store_true", help="test-time augmentation: add horizontal flips")
    parser.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S[,S...]",
                        help="test-time augmentation: input scales, e.g. 0.5,1,1.5 (default: 1)")
    add_verbose_flag(parser)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """``--verbose``: third-party notices (absl, Orbax, tfds) on the console, which are off by default."""
    parser.add_argument("--verbose", action="store_true", help="also show third-party libraries' log notices")


def load_ckpt(args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """Loads ``--ckpt`` at ``--step`` with ``--dtype``: (variables, ModelInfo); errors name the flag."""
    from fcn_jax.loading import load
    try:
        return load(args.ckpt, step=args.step, dtype=args.dtype)
    except ValueError as e:
        raise UsageError(f"--ckpt {e}") from None
