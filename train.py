"""Train photo2cartoon: ``python train.py --dataset NAME_OR_PATH [flags]`` (``--help``)."""

import sys

from p2c_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
