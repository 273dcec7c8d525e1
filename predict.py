#!/usr/bin/env python
"""Segment images with an FCN checkpoint: ``python predict.py --ckpt PATH IMAGE_OR_DIR... --out DIR``.

The library side is :mod:`fcn_jax.predict`; ``python predict.py --help`` lists the flags.
"""
import sys

from fcn_jax.predict import main

if __name__ == "__main__":
    sys.exit(main())
