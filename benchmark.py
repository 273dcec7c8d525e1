#!/usr/bin/env python
"""Throughput and MFU of FCN training / inference: ``python benchmark.py --variant fcn8s --mode train``.

The library side is :mod:`fcn_jax.benchmark`; ``python benchmark.py --help`` lists the flags. The
side-by-side comparison with PyTorch is ``python benchmarks/compare_torch.py`` (dev only).
"""
import sys

from fcn_jax.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
