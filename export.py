"""Export a generator: ``python export.py --weights W --format onnx --dst D`` (``--help``)."""

import sys

from p2c_jax.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
