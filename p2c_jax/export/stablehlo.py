"""StableHLO through ``jax.export``: one self-contained file that any jax can run.

The file is ``jax.export``'s serialization of ``x [N,S,S,3] float32 in [-1,1] -> image
[N,S,S,3] float32`` (NHWC, the batch N symbolic unless fixed) with the weights inside, lowered
for CPU, CUDA and TPU. ``load_exported`` needs nothing but jax: it does not import the nets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flax import nnx

    from p2c_jax.nn.models import NetSpec

PLATFORMS = ("cpu", "cuda", "tpu")


def export(spec: NetSpec, state: nnx.State, dst: Path, batch: int | None, precision: str) -> None:
    """Write the serialized ``jax.export.Exported`` of the generator's image to ``dst``."""
    import jax
    from jax import export as jax_export

    from p2c_jax.export.common import image_fn

    s = spec.img_size
    n = jax_export.symbolic_shape("N")[0] if batch is None else batch
    exported = jax_export.export(jax.jit(image_fn(spec, state, precision)), platforms=PLATFORMS)(
        jax.ShapeDtypeStruct((n, s, s, 3), np.float32)
    )
    Path(dst).write_bytes(exported.serialize())


def load_exported(path: str | Path) -> Callable:
    """The generator exported by ``p2c-export --format stablehlo``: ``f(x [N,S,S,3] float32 in
    [-1,1]) -> image [N,S,S,3] float32`` (a jitted function; any N unless exported with
    ``--batch``). Needs only jax."""
    import jax
    from jax import export as jax_export

    exported = jax_export.deserialize(bytearray(Path(path).read_bytes()))
    return jax.jit(exported.call)


def runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """NHWC numpy in, NHWC numpy out (the check's interface)."""
    f = load_exported(path)
    return lambda x: np.asarray(f(x))
