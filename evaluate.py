"""Score generators by FID, KID and identity: ``python evaluate.py --weights W --photos testA/ --cartoons testB/`` (``--help``)."""

import sys

from p2c_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
