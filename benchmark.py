#!/usr/bin/env python
"""``python benchmark.py --help``: a shim for :mod:`fcn_jax.cli.benchmark` (also the console script ``fcn-benchmark``)."""
import sys

from fcn_jax.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
