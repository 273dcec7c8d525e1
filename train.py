#!/usr/bin/env python
"""``python train.py --help``: a shim for :mod:`fcn_jax.cli.train` (also the console script ``fcn-train``)."""
import sys

from fcn_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
