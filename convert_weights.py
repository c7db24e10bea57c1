"""Convert photo2cartoon weights: ``python convert_weights.py --src SRC --dst DST`` (``--help``)."""

import sys

from p2c_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
