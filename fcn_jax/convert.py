"""``python -m fcn_jax.convert``: the converter's documented entry point (the tool is :mod:`fcn_jax.cli.convert`)."""
import sys

from fcn_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
