#!/usr/bin/env python
"""Evaluate an FCN checkpoint with the reference's metrics: ``python eval.py --ckpt PATH [--dataset ...]``.

The library side is :mod:`fcn_jax.evaluate`; ``python eval.py --help`` lists the flags.
"""
import sys

from fcn_jax.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
