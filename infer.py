"""Photos -> cartoons: ``python infer.py INPUTS... --output DIR --weights WEIGHTS`` (``--help``)."""

import sys

from p2c_jax.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
