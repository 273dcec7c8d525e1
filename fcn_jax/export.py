"""``python -m fcn_jax.export``: the dataset exporter's documented entry point (the tool is :mod:`fcn_jax.cli.export`)."""
import sys

from fcn_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
