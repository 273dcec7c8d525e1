"""``python -m fcn_jax.export``: the name is kept for model export; datasets are exported to a folder with
``python -m fcn_jax.dataset export`` (:mod:`fcn_jax.cli.dataset`). Until model export lands here, the old
dataset form (``python -m fcn_jax.export DATASET OUT_DIR ...``) gets one line naming the new command, exit code 2."""
from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

PROG = "python -m fcn_jax.export"
DATASET_EXPORT = "python -m fcn_jax.dataset export"


def main(argv: Sequence[str] | None = None) -> int:
    """Names the new dataset command for the old form (with the given arguments) on stderr; returns 2."""
    from fcn_jax.cli import fail
    argv = list(sys.argv[1:] if argv is None else argv)
    command = f"{DATASET_EXPORT} {shlex.join(argv) if argv else 'DATASET OUT_DIR'}"
    return fail(PROG, f"fcn_jax.export no longer exports datasets (the name is for model export); to export a "
                      f"dataset to a folder use: {command}")


if __name__ == "__main__":
    sys.exit(main())
