"""What the data package shares without TensorFlow Datasets: the error type, the standard split names and
the tfds progress-bar switch. Folder datasets (:mod:`fcn_jax.data.folder`) and the package's entry points
import this module, so reading a folder never imports ``tensorflow_datasets``; :mod:`fcn_jax.data.common`
(the tfds builders' base) re-exports these names.
"""
from __future__ import annotations

import sys

__all__ = ["DataError", "EVAL_SPLIT", "FILE_FORMAT", "TRAIN_SPLIT", "disable_tfds_progress_bars",
           "tfds_progress_bars"]

FILE_FORMAT = "array_record"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"

_tfds_progress_bars = True


class DataError(ValueError):
    """A dataset cannot be built or read: missing sources, bad files or inconsistent splits.

    The message is one line naming the offending file, value or directory.
    """


def disable_tfds_progress_bars() -> None:
    """No tfds progress bars from now on: at once if tfds is already imported, else when
    :mod:`fcn_jax.data.common` imports it (this does not import tfds)."""
    global _tfds_progress_bars
    _tfds_progress_bars = False
    tfds = sys.modules.get("tensorflow_datasets")
    if tfds is not None and hasattr(tfds, "disable_progress_bar"):
        tfds.disable_progress_bar()


def tfds_progress_bars() -> bool:
    """False once :func:`disable_tfds_progress_bars` was called."""
    return _tfds_progress_bars
