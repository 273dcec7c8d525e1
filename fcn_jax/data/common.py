"""What the dataset builders share: the feature layout and a builder base class (and, re-exported from the
tfds-free :mod:`fcn_jax.data.base`, the error type and the split names).

Every segmentation dataset of this project stores the same three features, written as
``array_record`` files that read back without TensorFlow:

- ``image``: (H, W, 3) uint8 RGB,
- ``segmentation``: (H, W) uint8 class index, ``fcn_jax.preprocess.VOID`` (255) = ignored (boundaries, unlabelled),
- ``file_name``: the source file's stem (image id).

Both images and labels are stored as zlib-compressed tensors rather than ``tfds.features.Image``
because encoding PNG/JPEG inside tfds needs TensorFlow, which this project does not depend on.
"""
from __future__ import annotations

import abc
import contextlib
import io
import os
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

# tfds-free names, defined in fcn_jax.data.base and re-exported here (existing imports keep working).
from fcn_jax.data.base import EVAL_SPLIT, FILE_FORMAT, TRAIN_SPLIT, DataError, tfds_progress_bars  # noqa: F401

if not tfds_progress_bars():  # fcn_jax.data.disable_progress_bars() was called before tfds was imported
    tfds.disable_progress_bar()


def segmentation_features() -> tfds.features.FeaturesDict:
    """The feature layout shared by every builder (see the module docstring)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
            "segmentation": tfds.features.Tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
            "file_name": tfds.features.Text(),
        }
    )


class SegmentationBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the project's builders: array_record output, class names in the info's metadata.

    Subclasses set ``CLASS_NAMES``, ``DESCRIPTION``, ``HOMEPAGE`` and implement
    ``expected_split_sizes``. Extra constructor argument (besides tfds's ``data_dir``, ``config``,
    ``version``, ``file_format``):

    - ``manual_dir``: where manually downloaded sources are looked up; overrides
      ``DownloadConfig.manual_dir`` and tfds's default ``<data_dir>/downloads/manual``
      (only builders with external sources use it).
    """

    CLASS_NAMES: ClassVar[tuple[str, ...]] = ()
    DESCRIPTION: ClassVar[str] = ""
    HOMEPAGE: ClassVar[str | None] = None

    def __init__(self, *, manual_dir: str | os.PathLike | None = None, **kwargs: Any):
        kwargs.setdefault("file_format", FILE_FORMAT)
        super().__init__(**kwargs)
        self._manual_dir_override = os.fspath(manual_dir) if manual_dir else None
        self._original_state.update(manual_dir=self._manual_dir_override, file_format=kwargs["file_format"])

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        """None: no tfds ``checksums.tsv`` or metadata folder sits beside this code.

        tfds looks those up through this path (archive MD5s are checked by the builders
        themselves); resolving it would also need the optional ``importlib_resources`` package.
        """
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=segmentation_features(),
            supervised_keys=("image", "segmentation"),
            homepage=self.HOMEPAGE,
            metadata=tfds.core.MetadataDict(class_names=list(self.CLASS_NAMES)),
        )

    @abc.abstractmethod
    def expected_split_sizes(self) -> Mapping[str, int]:
        """{split: number of examples} the current config produces, known before building."""

    def prepare(self) -> "SegmentationBuilder":
        """Builds the dataset unless it is already complete on disk; returns ``self``.

        tfds's own "Downloading and preparing dataset Unknown size ..." banner (nothing is downloaded
        for a built-in dataset, and the sizes are known) is replaced by one line naming what is built
        and where; tfds's progress bars stay.
        """
        if not self.is_prepared():
            print(f"building {self.name}/{self.builder_config.name} in {self.data_dir} (once; later runs "
                  f"read it from there)", file=sys.stderr, flush=True)
            with contextlib.redirect_stdout(io.StringIO()):
                self.download_and_prepare()
        return self
