#!/usr/bin/env python
"""``python predict.py --help``: a shim for :mod:`fcn_jax.cli.predict` (also the console script ``fcn-predict``)."""
import sys

from fcn_jax.cli.predict import main

if __name__ == "__main__":
    sys.exit(main())
