"""``python -m fcn_jax.dataset``: the dataset tools' documented entry point (the tool is :mod:`fcn_jax.cli.dataset`)."""
import sys

from fcn_jax.cli.dataset import main

if __name__ == "__main__":
    sys.exit(main())
