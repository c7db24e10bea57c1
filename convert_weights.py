"""Convert photo2cartoon weights: ``python convert_weights.py --src SRC --dst DST``.

SRC a ``.pt``/``.pth`` (photo2cartoon_weights.pt or model_mobilefacenet.pth) writes our
checkpoint directory at DST; SRC our checkpoint directory (or a training workdir) writes a
``.pt``/``.pth`` that the original PyTorch code loads with ``strict=True``.
"""

import sys

from p2c_jax.convert import main

if __name__ == "__main__":
    sys.exit(main())
