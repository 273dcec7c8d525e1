#!/usr/bin/env python
"""``python eval.py --help``: a shim for :mod:`fcn_jax.cli.eval` (also the console script ``fcn-eval``)."""
import sys

from fcn_jax.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
