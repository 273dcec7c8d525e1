"""``python -m fcn_jax.export``: the model exporter's documented entry point (the tool is :mod:`fcn_jax.cli.export`,
the library :mod:`fcn_jax.deploy`)."""
import sys

from fcn_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
