"""Photos -> cartoons: ``python infer.py INPUTS... --output DIR --weights WEIGHTS``.

See ``p2c_jax.inference`` (console script ``p2c-infer``); ``--help`` lists the options.
"""

import sys

from p2c_jax.inference import main

if __name__ == "__main__":
    sys.exit(main())
